"""The strict .npy reader: every array np.save writes comes back as np.load reads it; a damaged,
hostile or non-numeric file is a DataError naming it, found before anything is allocated."""
import io
import tracemalloc

import numpy as np
import pytest

from kindling.runtime.errors import DataError
from kindling.runtime.npy import read_npy


def _write(path, a, version=None):
    with open(path, "wb") as f:
        np.lib.format.write_array(f, a, version=version)
    return path


@pytest.mark.parametrize("version", [None, (1, 0), (2, 0), (3, 0)])
@pytest.mark.parametrize("a", [np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.float64(2.5), np.zeros((0, 3)),
                               np.asfortranarray(np.arange(6, dtype=">i4").reshape(2, 3)), np.array([True, False]),
                               np.arange(5, dtype=np.uint16), np.ones((3, 1, 2), np.float16)],
                         ids=["f4", "scalar", "empty", "fortran-big-endian", "bool", "u2", "f2"])
def test_reads_what_numpy_writes(tmp_path, a, version):
    path = _write(tmp_path / "a.npy", a, version)
    got, want = read_npy(path), np.load(path, allow_pickle=False)
    assert got.dtype == want.dtype and got.shape == want.shape and got.flags.f_contiguous == want.flags.f_contiguous
    np.testing.assert_array_equal(got, want)


def _with_header(path, header: bytes, data: bytes = b""):
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + data)
    return path


def test_zero_bytes_and_other_files(tmp_path):
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=rf"^{empty}: not a .npy file \(0 bytes"):  # numpy: EOFError
        read_npy(empty)
    with pytest.raises(DataError, match=r"missing.npy: cannot read: No such file"):
        read_npy(tmp_path / "missing.npy")


@pytest.mark.parametrize("header", [b"{'descr': '<f4', 'fortran_order': False, 'shape': (3,", b"{'descr': '<f4'",
                                    b"{'descr': '<f4', 'fortran_order': False, 'shape': (3,), 'x': __import__('os')}",
                                    b"{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (3,)}",
                                    b"{'descr': '<f4', 'fortran_order': 1, 'shape': (3,)}", b"\xff\xfe"],
                         ids=["unclosed", "short", "extra-key", "repeated-key", "int-order", "binary"])
def test_damaged_headers_are_refused_without_evaluating_them(tmp_path, header):
    path = _with_header(tmp_path / "bad.npy", header, bytes(12))  # numpy: SyntaxError, TokenError, ValueError
    with pytest.raises(DataError, match=rf"^{path}: (damaged .npy header|not a .npy header|a .npy header holds)"):
        read_npy(path)


@pytest.mark.parametrize("descr", ["|O", "V4", "<U3", "|S2", "[('a', '<f4')]", "<c8", "<M8[s]"])
def test_only_plain_number_types(tmp_path, descr):
    path = _with_header(tmp_path / "obj.npy", f"{{'descr': '{descr}', 'fortran_order': False, 'shape': (1,), }}"
                        .encode(), bytes(8))
    with pytest.raises(DataError, match=rf"^{path}: (dtype .* is not a plain number type|damaged .npy header)"):
        read_npy(path)


def test_a_claimed_shape_is_compared_with_the_file_before_allocating(tmp_path):
    path = _with_header(tmp_path / "huge.npy", b"{'descr': '<f4', 'fortran_order': False, 'shape': (10000000000,), }",
                        bytes(16))
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=rf"^{path}: the header says \(10000000000,\) of float32 "
                                            r"\(40,000,000,000 bytes\) but the file holds 16 bytes of data"):
            read_npy(path)  # numpy allocates 37 GiB first
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()
    path = _with_header(tmp_path / "wrap.npy", b"{'descr': '<f8', 'fortran_order': False, "
                                               b"'shape': (4294967296, 4294967296), }", b"")
    with pytest.raises(DataError, match="but the file holds 0 bytes"):  # 2^64 elements: no int64 wrap to 0
        read_npy(path)


def test_headers_longer_than_numpys_bound(tmp_path):
    path = tmp_path / "long.npy"
    path.write_bytes(b"\x93NUMPY\x02\x00" + (1 << 20).to_bytes(4, "little") + b" " * 64)
    with pytest.raises(DataError, match=r"a .npy header of 1,048,576 bytes"):
        read_npy(path)
