"""read_labels: a labels file (synset lines, BOM, CRLF), unique (classes) and not (display names)."""
from __future__ import annotations

from kindling.runtime.data import read_labels

TOKENS = [b"\xef\xbb\xbf", b"\r\n", b"\n", b"\x00", b"\xff", b"n01440764 tench, Tinca tinca\n", b" ", b"\t"]


def seeds() -> list[bytes]:
    return [b"n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n",
            b"\xef\xbb\xbfcat\r\ndog\r\n\r\nbird\r\n", "caf\u00e9\nna\u00efve\n".encode(), b"crane\ncrane\n"]


def target(data: bytes, tmp) -> None:
    path = tmp / "labels.txt"
    path.write_bytes(data)
    read_labels(path, unique=False)
    read_labels(path)
