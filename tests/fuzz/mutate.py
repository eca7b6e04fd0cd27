"""Seeded mutations of seed inputs: byte-level (bit flips, interesting values, inserts, erasures,
repeats, splices with another seed) and token-level (a target's dictionary: field names, numbers
at the edges of their ranges, deep nesting). Deterministic for (seed, target, index), so any
finding is reproduced from its number alone."""
from __future__ import annotations

import random
import struct

INTERESTING_BYTES = [0, 1, 0x7F, 0x80, 0xFF, 0x20, 0x0A, 0x22, 0x7B, 0x7D]
INTERESTING_INTS = [0, 1, -1, 2, 3, 7, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1,
                    -2**31, -2**63]
NUMBER_TOKENS = [str(v).encode() for v in INTERESTING_INTS] + [b"1e999", b"-1e999", b"nan", b"inf", b"0.0",
                                                                b"1e-45", b"99999999999999999999999"]


def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _pos(rng, buf, end_ok=False) -> int:
    return rng.randrange(len(buf) + (1 if end_ok else 0)) if buf else 0


def flip_bit(rng, buf, ctx):
    if buf:
        i = _pos(rng, buf)
        buf[i] ^= 1 << rng.randrange(8)


def set_byte(rng, buf, ctx):
    if buf:
        buf[_pos(rng, buf)] = rng.choice(INTERESTING_BYTES) if rng.random() < 0.5 else rng.randrange(256)


def insert_random(rng, buf, ctx):
    i = _pos(rng, buf, True)
    buf[i:i] = bytes(rng.randrange(256) for _ in range(rng.choice([1, 2, 4, 8, 16])))


def erase(rng, buf, ctx):
    if buf:
        i = _pos(rng, buf)
        del buf[i:i + rng.choice([1, 2, 4, 16, 64, 256])]


def duplicate(rng, buf, ctx):
    if buf:
        i = _pos(rng, buf)
        chunk = buf[i:i + rng.choice([1, 4, 16, 64, 256])]
        j = _pos(rng, buf, True)
        buf[j:j] = chunk * rng.choice([1, 1, 2, 8, 64])


def binary_int(rng, buf, ctx):
    """An interesting integer as a varint or little-endian bytes, over what was there."""
    v = rng.choice(INTERESTING_INTS)
    enc = rng.choice([_varint(v), struct.pack("<q", v), struct.pack("<i", max(min(v, 2**31 - 1), -2**31)),
                      struct.pack("<Q", v & (2**64 - 1))])
    i = _pos(rng, buf, True)
    buf[i:i + (len(enc) if rng.random() < 0.7 else 0)] = enc


def token(rng, buf, ctx):
    """One of the target's tokens (or a number) inserted or written over what was there."""
    tok = rng.choice(ctx["tokens"] + NUMBER_TOKENS)
    i = _pos(rng, buf, True)
    buf[i:i + (len(tok) if rng.random() < 0.3 else 0)] = tok


def text_number(rng, buf, ctx):
    """A run of digits in text replaced by an edge-of-range number."""
    starts = [i for i in range(len(buf)) if 48 <= buf[i] <= 57 and (i == 0 or not 48 <= buf[i - 1] <= 57)]
    if not starts:
        return
    i = rng.choice(starts)
    j = i
    while j < len(buf) and 48 <= buf[j] <= 57:
        j += 1
    buf[i:j] = rng.choice(NUMBER_TOKENS)


def nest(rng, buf, ctx):
    """Deep nesting: an opener repeated hundreds or thousands of times."""
    opener = rng.choice(ctx["nesting"] or [b"["])
    depth = rng.choice([100, 1000, 10000])
    i = _pos(rng, buf, True)
    buf[i:i] = opener * depth


def splice(rng, buf, ctx):
    other = rng.choice(ctx["seeds"])
    if other:
        a = rng.randrange(len(other))
        piece = other[a:a + rng.choice([8, 64, 512, 4096])]
        i = _pos(rng, buf, True)
        buf[i:i + (len(piece) if rng.random() < 0.5 else 0)] = piece


def truncate(rng, buf, ctx):
    if buf:
        del buf[rng.randrange(len(buf)):]


MUTATORS = [flip_bit, set_byte, insert_random, erase, duplicate, binary_int, token, token, text_number,
            nest, splice, truncate]


def generate(seed: int, target_name: str, index: int, seeds: list[bytes], tokens=(), nesting=(),
             max_size: int = 1 << 22, structured=None) -> bytes:
    """Input number ``index`` of a campaign: a seed (unchanged for the first of each) mutated 1-8 times;
    half of them first go through the target's own ``structured(rng, data)`` when it has one."""
    if index < len(seeds):
        return seeds[index]
    rng = random.Random(f"{seed}:{target_name}:{index}")
    buf = bytearray(rng.choice(seeds))
    if structured is not None and rng.random() < 0.5:
        buf = bytearray(structured(rng, bytes(buf)))
        if rng.random() < 0.5:
            return bytes(buf[:max_size])
    ctx = {"seeds": seeds, "tokens": list(tokens), "nesting": list(nesting)}
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3, 4, 8])):
        rng.choice(MUTATORS)(rng, buf, ctx)
    return bytes(buf[:max_size])
