"""archive.py and quantize/linear.py were split into modules along their seams (session 11); every name that code,
tests and benchmarks import from the old modules is still there, and is the very object of the module it moved to
(a monkeypatch of ``archive._inference_tensors`` still reaches ``encode``)."""

import importlib

import pytest

ARCHIVE = {
    "_format": ["MAGIC", "VERSION", "DYNAMIC_VERSION", "READABLE_VERSIONS", "_HEADER", "HEADER_BYTES", "FORMAT",
                "PART_KIND"],
    "_records": ["_Tensor", "_module_kinds", "_inference_tensors", "_dequantize"],
    "_writing": ["SPARSE_MIN_ZEROS", "SHARED_MAX_VALUES", "SPARSE_FIXED_INDEX_BITS", "_Payload", "_stream_parts",
                 "_encode_tensor"],
    "_reading": ["_read", "_part", "_decode_tensor"],
    "_info": ["TensorBytes", "ArchiveInfo", "archive_info"],
    "_rebuild": ["_build", "_check_rebuildable"],
}  # fmt: skip


@pytest.mark.parametrize(("module", "names"), list(ARCHIVE.items()))
def test_the_archive_module_still_holds_every_name_it_had(module, names):
    archive = importlib.import_module("deepslim.compress.coding.archive")
    home = importlib.import_module(f"deepslim.compress.coding.{module}")
    assert [n for n in names if getattr(archive, n, None) is not getattr(home, n)] == []


def test_the_linear_module_still_holds_its_config_and_the_check_dynamic_int8_reads():
    from deepslim.compress.quantize import _linear_config, linear

    assert linear.LinearQuantConfig is _linear_config.LinearQuantConfig
    assert linear.dynamic_conflict is _linear_config.dynamic_conflict
    assert {"QuantMixin", "QLinear", "QConv2d", "QUANTIZABLE", "calibrate", "swap_to_float"} <= set(vars(linear))


def test_encode_reads_the_inference_tensors_through_the_archive_module(monkeypatch):
    import torch

    import deepslim as ds
    from deepslim.compress.coding import archive

    seen = []
    real = archive._inference_tensors
    monkeypatch.setattr(archive, "_inference_tensors", lambda m: seen.append(m) or real(m))
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    ds.encode(model)
    assert seen == [model]
