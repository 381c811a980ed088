"""The archive reader's size checks, one malformed field at a time: each refusal's exact text, and the well-formed
entries of every layout and value encoding accepted with their decoded size.

``check_tensors`` sees the manifest before anything is allocated; a check that passes a bad field (or names the wrong
one) lets a crafted file allocate without bound or fail later with an unhelpful message.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from deepslim.compress.coding._limits import check_tensors
from deepslim.compress.coding.archive import PART_KIND
from deepslim.errors import ArchiveError

PAYLOAD = 1000


def _dense_raw() -> dict[str, Any]:
    return {"name": "w", "shape": [2, 3], "dtype": "float32", "layout": "dense", "parts": {"raw": [0, 24]},
            "streams": {}, "values": {"kind": "raw"}}  # fmt: skip


def _sparse_shared() -> dict[str, Any]:
    # 4 nonzeros of a 4x5 float16 tensor: a 5-bit index stream and 2-bit codes into a codebook of 3 entries
    return {"name": "s", "shape": [4, 5], "dtype": "float16", "layout": "sparse", "index_bits": 5, "nonzeros": 4,
            "parts": {"index": [0, 3], "codes": [3, 1], "codebook": [4, 6]},
            "streams": {"index": {"coding": "fixed", "bits": 20, "count": 4},
                        "codes": {"coding": "huffman", "bits": 8, "count": 4}},
            "values": {"kind": "shared", "size": 3}}  # fmt: skip


def _dense_linear(axis: int | None = 0, asymmetric: bool = False) -> dict[str, Any]:
    channels = 3 if axis == 0 else 1
    parts = {"codes": [0, 6], "scales": [6, 4 * channels]}
    if asymmetric:
        parts["zeros"] = [6 + 4 * channels, 4 * channels]
    return {"name": "q", "shape": [3, 2], "dtype": "float32", "layout": "dense", "parts": parts,
            "streams": {"codes": {"coding": "fixed", "bits": 48, "count": 6}},
            "values": {"kind": "linear", "channels": channels, "axis": axis, "asymmetric": asymmetric}}  # fmt: skip


def _check(*entries: dict[str, Any], payload: int = PAYLOAD, file_bytes: int = 2000) -> None:
    check_tensors({"tensors": list(entries)}, payload, file_bytes, PART_KIND)


def _refusal(entry: dict[str, Any], **kw: Any) -> str:
    with pytest.raises(ArchiveError) as err:
        _check(entry, **kw)
    return str(err.value)


def test_well_formed_entries_of_every_layout_and_value_encoding_pass():
    _check(_dense_raw(), _sparse_shared(), _dense_linear(0), _dense_linear(None), _dense_linear(0, asymmetric=True))
    empty = {**_sparse_shared(), "nonzeros": 0, "streams": {"index": {"coding": "fixed", "bits": 0, "count": 0},
                                                            "codes": {"coding": "fixed", "bits": 0, "count": 0}},
             "values": {"kind": "shared", "size": 0}, "parts": {"index": [0, 0], "codes": [0, 0], "codebook": [0, 0]}}
    _check(empty)  # an all-zero sparse tensor: no codes and an empty codebook are legitimate


def _with(base: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    entry = copy.deepcopy(base)
    node = entry
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return entry


_DELETE = object()

CASES = [
    (_dense_raw, ("shape",), "3", "tensor w: shape '3' is not a list of at most 16 sizes"),
    (_dense_raw, ("shape",), [1] * 17, f"tensor w: shape {[1] * 17!r} is not a list of at most 16 sizes"),
    (_dense_raw, ("shape",), [2, -3], "tensor w: a dimension is -3, not an integer in [0, ...]"),
    (_dense_raw, ("shape",), [2, 3.0], "tensor w: a dimension is 3.0, not an integer in [0, ...]"),
    (_dense_raw, ("dtype",), "complex64", "tensor w: unknown dtype 'complex64'"),
    (_dense_raw, ("parts",), [], "tensor w: no parts"),
    (_dense_raw, ("parts", "blob"), [0, 1], "tensor w: part 'blob' is not a known part with [offset, length]"),
    (_dense_raw, ("parts", "raw"), [0, 24, 1], "tensor w: part 'raw' is not a known part with [offset, length]"),
    (_dense_raw, ("parts", "raw"), (0, 24), "tensor w: part 'raw' is not a known part with [offset, length]"),
    (_dense_raw, ("parts", "raw"), [-1, 24], "tensor w: part raw offset is -1, not an integer in [0, ...]"),
    (_dense_raw, ("parts", "raw"), [0, "24"], "tensor w: part raw length is '24', not an integer in [0, ...]"),
    (_dense_raw, ("parts", "raw"), [977, 24], "tensor w: part 'raw' lies outside the payload"),
    (_dense_raw, ("streams",), None, "tensor w: no streams"),
    (_dense_raw, ("layout",), "blocked", "tensor w: unknown layout 'blocked'"),
    (_dense_raw, ("values",), "raw", "tensor w: no value encoding"),
    (_dense_raw, ("parts", "raw"), [0, 20], "tensor w: 20 raw bytes for 6 values of 4 bytes"),
    (_dense_raw, ("values", "kind"), "lz4", "tensor w: unknown value encoding 'lz4'"),
    (_sparse_shared, ("index_bits",), 1, "tensor s: index_bits is 1, not an integer in [2, 16]"),
    (_sparse_shared, ("index_bits",), 17, "tensor s: index_bits is 17, not an integer in [2, 16]"),
    (_sparse_shared, ("index_bits",), _DELETE, "tensor s: index_bits is None, not an integer in [2, 16]"),
    (_sparse_shared, ("nonzeros",), 21, "tensor s: nonzeros is 21, not an integer in [0, 20]"),
    (_sparse_shared, ("streams", "index", "count"), 3, "tensor s: its index stream cannot hold 4 nonzeros"),
    (_sparse_shared, ("streams", "index"), _DELETE, "tensor s: its index stream cannot hold 4 nonzeros"),
    (_sparse_shared, ("streams", "codes", "coding"), "rle", "tensor s: stream 'codes' has no known coding or no part"),
    (_sparse_shared, ("streams", "codes"), 8, "tensor s: stream 'codes' has no known coding or no part"),
    (_sparse_shared, ("streams", "codes", "bits"), 9, "tensor s: stream codes bits is 9, not an integer in [0, 8]"),
    (_sparse_shared, ("streams", "codes", "count"), 9, "tensor s: stream codes count is 9, not an integer in [0, 8]"),
    (_sparse_shared, ("streams", "codes", "count"), 3, "tensor s: its code stream does not hold its 4 values"),
    (_sparse_shared, ("values", "size"), 0, "tensor s: codebook size is 0, not an integer in [1, ...]"),
    (_sparse_shared, ("values", "size"), 4, "tensor s: codebook of 6 bytes for 4 entries"),
    (_dense_linear, ("values", "channels"), 0, "tensor q: channels is 0, not an integer in [1, ...]"),
    (_dense_linear, ("values", "axis"), 2, "tensor q: quantization axis 2 does not fit shape [3, 2]"),
    (_dense_linear, ("values", "axis"), -1, "tensor q: quantization axis -1 does not fit shape [3, 2]"),
    (_dense_linear, ("values", "axis"), True, "tensor q: quantization axis True does not fit shape [3, 2]"),
    (_dense_linear, ("values", "channels"), 2, "tensor q: 2 quantization channels do not fit shape [3, 2] and its "
                                               "scale parts"),
    (_dense_linear, ("parts", "scales"), [6, 8], "tensor q: 3 quantization channels do not fit shape [3, 2] and its "
                                                 "scale parts"),
    (_dense_linear, ("values", "asymmetric"), True, "tensor q: 3 quantization channels do not fit shape [3, 2] and "
                                                    "its scale parts"),
]


@pytest.mark.parametrize("make, path, value, message", CASES)
def test_each_malformed_field_is_refused_with_its_own_message(make, path, value, message):
    assert _refusal(_with(make(), path, value)) == message


def test_a_sparse_tensor_may_not_be_quantized_along_an_axis_other_than_its_first():
    entry = _with(_sparse_shared(), ("values",), {"kind": "linear", "channels": 5, "axis": 1})
    assert _refusal(entry) == "tensor s: quantization axis 1 does not fit shape [4, 5]"


def test_asymmetric_zero_points_need_their_own_part_of_four_bytes_per_channel():
    entry = _dense_linear(0, asymmetric=True)
    _check(entry)
    entry["parts"]["zeros"] = [18, 8]
    assert _refusal(entry) == "tensor q: 3 quantization channels do not fit shape [3, 2] and its scale parts"
    del entry["parts"]["zeros"]
    assert _refusal(entry) == "tensor q: 3 quantization channels do not fit shape [3, 2] and its scale parts"


def test_the_manifest_needs_a_list_of_named_entries():
    for manifest in ({}, {"tensors": {"w": 1}}):
        with pytest.raises(ArchiveError) as err:
            check_tensors(manifest, PAYLOAD, 2000, PART_KIND)
        assert str(err.value) == "archive manifest malformed: it has no list of tensors"
    for entry in ([1], {"shape": [1]}, {"name": 3}):
        with pytest.raises(ArchiveError) as err:
            check_tensors({"tensors": [entry]}, PAYLOAD, 2000, PART_KIND)
        assert str(err.value) == "archive manifest malformed: a tensor entry has no name"


def test_the_decoded_budget_is_64_mib_plus_4096_bytes_per_file_byte_summed_over_tensors():
    # 64 MiB + 4096 * 10 bytes of budget; two sparse all-zero float32 tensors of 8 MiB each fit, a third does not
    def zeros(name: str) -> dict[str, Any]:
        return {"name": name, "shape": [2 << 20], "dtype": "float32", "layout": "sparse", "index_bits": 8,
                "nonzeros": 0, "parts": {"index": [0, 0], "codes": [0, 0], "codebook": [0, 0]},
                "streams": {"index": {"coding": "fixed", "bits": 0, "count": 0},
                            "codes": {"coding": "fixed", "bits": 0, "count": 0}},
                "values": {"kind": "shared", "size": 0}}  # fmt: skip

    budget = (64 << 20) + 4096 * 10
    fits = [zeros(f"t{i}") for i in range(8)]  # 8 x 8 MiB = 64 MiB <= budget
    _check(*fits, file_bytes=10)
    with pytest.raises(ArchiveError) as err:
        _check(*fits, zeros("t8"), file_bytes=10)
    assert str(err.value) == (f"archive declares more than {budget:,} bytes of tensors in a 10-byte file (at tensor "
                              "t8); refusing to allocate them")  # fmt: skip
    _check(*fits, zeros("t8"), file_bytes=(8 << 20) // 4096)  # 2048 more file bytes buy the ninth 8 MiB
    cap = 16 << 30  # however large the file, one archive decodes to at most 16 GiB
    huge = {**zeros("big"), "shape": [(4 << 30) + 1]}
    with pytest.raises(ArchiveError) as err:
        _check(huge, file_bytes=10**9)
    assert str(err.value) == (f"archive declares more than {cap:,} bytes of tensors in a {10**9:,}-byte file (at "
                              "tensor big); refusing to allocate them")  # fmt: skip
    _check({**zeros("big"), "shape": [4 << 30]}, file_bytes=10**9)
