"""Golden text and record of an archive's byte accounting (``print(ds.archive_info(path))``): the columns, a scalar's
"()" shape, a name longer than its column, thousands separators, the parts in order, the fp32 reference and ratio."""

from __future__ import annotations

from deepslim.compress.coding.archive import ArchiveInfo, TensorBytes

LONG = "a_very_long_tensor_name_of_more_than_32_chars.bias"


def _info() -> ArchiveInfo:
    tensors = (TensorBytes("features.0.weight", (16, 3, 3, 3), "sparse", "shared",
                           {"indices": 300, "codes": 200, "codebooks": 64}),
               TensorBytes("scale", (), "dense", "raw", {"raw": 4}),
               TensorBytes(LONG, (1000,), "dense", "linear", {"codes": 1000, "scales": 282}))  # fmt: skip
    parts = {"header": 150, "indices": 300, "codes": 1200, "codebooks": 64, "raw": 4, "scales": 282}
    return ArchiveInfo(3, 2000, 150, tensors, None, parts)


def test_the_byte_accounting_reads_word_for_word():
    assert str(_info()).splitlines() == [
        "tensor                           shape              layout  values      bytes",
        "features.0.weight                16x3x3x3           sparse  shared        564",
        "scale                            ()                 dense   raw             4",
        f"{LONG} 1000               dense   linear      1,282",
        "total 2,000 B (header 150, indices 300, codes 1,200, codebooks 64, raw 4, scales 282); fp32 5,732 B; "
        "ratio 2.9x",
    ]


def test_the_byte_accounting_record_has_the_fp32_reference_and_each_tensor():
    info = _info()
    assert info.dense_fp32_bytes() == 4 * (16 * 27 + 1 + 1000) and info.ratio == 5732 / 2000
    assert info.to_dict() == {
        "version": 3, "total_bytes": 2000, "header_bytes": 150,
        "by_part": {"header": 150, "indices": 300, "codes": 1200, "codebooks": 64, "raw": 4, "scales": 282},
        "dense_fp32_bytes": 5732, "ratio": 2.866,
        "tensors": [
            {"name": "features.0.weight", "shape": [16, 3, 3, 3], "layout": "sparse", "encoding": "shared",
             "parts": {"indices": 300, "codes": 200, "codebooks": 64}, "bytes": 564},
            {"name": "scale", "shape": [], "layout": "dense", "encoding": "raw", "parts": {"raw": 4}, "bytes": 4},
            {"name": LONG, "shape": [1000], "layout": "dense", "encoding": "linear",
             "parts": {"codes": 1000, "scales": 282}, "bytes": 1282},
        ],
    }  # fmt: skip
