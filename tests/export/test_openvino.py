"""OpenVINO as a second CPU runtime: deepslim's fp32 and QDQ int8 ONNX files run in OpenVINO with the results
PyTorch and ONNX Runtime give, the int8 file really runs on int8 kernels there, and benchmark/compare/interleave
measure OpenVINO beside ONNX Runtime in worker processes. Skipped when the ``openvino`` extra is not installed."""

import numpy as np
import pytest
import torch

import deepslim as ds
from deepslim.export import openvino as dsov
from deepslim.export.onnx import run_onnx

needs_openvino = pytest.mark.skipif(not dsov.available(), reason="openvino is not installed (pip install "
                                    "'deepslim[openvino]')")  # fmt: skip


def _cosine(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """resnet20 on 16x16 inputs: an fp32 file and the documented int8 path (quantize_ with calib_data, then export)."""
    tmp = tmp_path_factory.mktemp("ov")
    torch.manual_seed(0)
    model = ds.create_model("resnet20").eval()
    x = torch.randn(4, 3, 16, 16)
    ds.export_onnx(model, tmp / "fp32.onnx", example_input=x)
    with torch.no_grad():
        float_out = model(x).numpy()
    ds.quantize_(model, ds.LinearQuantConfig(bits=8), calib_data=[(torch.randn(16, 3, 16, 16),)])
    ds.export_onnx(model, tmp / "int8.onnx", example_input=x)
    with torch.no_grad():
        fq_out = model(x).numpy()
    return {"dir": tmp, "x": x, "float": float_out, "fake_quant": fq_out, "model": model}


@needs_openvino
def test_an_fp32_file_runs_in_openvino_as_in_pytorch_and_onnx_runtime(files):
    got = dsov.run_openvino(files["dir"] / "fp32.onnx", files["x"])
    np.testing.assert_allclose(got, files["float"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got, run_onnx(files["dir"] / "fp32.onnx", files["x"].numpy()), rtol=1e-4, atol=1e-4)


@needs_openvino
def test_an_int8_file_agrees_with_onnx_runtime_and_the_fake_quantized_model(files):
    got = dsov.run_openvino(files["dir"] / "int8.onnx", files["x"])
    assert _cosine(got, run_onnx(files["dir"] / "int8.onnx", files["x"].numpy())) >= 0.99
    assert _cosine(got, files["fake_quant"]) >= 0.99
    assert (got.argmax(-1) == files["fake_quant"].argmax(-1)).mean() >= 0.75


@needs_openvino
def test_the_int8_file_runs_every_conv_and_linear_on_int8_kernels_and_the_fp32_file_none(files):
    q = dsov.layer_precisions(files["dir"] / "int8.onnx")
    f = dsov.layer_precisions(files["dir"] / "fp32.onnx")
    assert q.compute_layers == f.compute_layers == 20  # 19 convolutions and the classifier
    assert q.integer_layers == 20 and f.integer_layers == 0


@needs_openvino
def test_benchmark_and_interleave_measure_openvino_beside_onnx_runtime(files):
    path = files["dir"] / "int8.onnx"
    r = ds.benchmark(path, runtime="openvino", threads=1, min_seconds=0.05)
    assert r.runtime == "openvino" and r.runs >= 20 and r.threads == 1 and 0 < r.median_ms < 1000
    assert r.peak_memory_bytes is not None and r.peak_memory_bytes > 0
    c = ds.compare(path, path, runtime_b="openvino", threads=1, rounds=2, block=3)  # interleave({"a": (path, rt)...})
    assert (c.a.runtime, c.b.runtime) == ("onnxruntime", "openvino") and c.a.runs == c.b.runs == 6
    assert c.speedup == pytest.approx(c.a.median_ms / c.b.median_ms)


@needs_openvino
def test_export_openvino_writes_ir_that_runs_like_the_model_and_can_be_benchmarked(files, tmp_path):
    res = dsov.export_openvino(files["model"], tmp_path / "m.xml", example_input=files["x"])
    assert res.path.is_file() and (tmp_path / "m.bin").is_file() and res.integer_layers == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]  # no temporary left behind
    assert res.cosine >= 0.99 and res.size_bytes == res.path.stat().st_size + (tmp_path / "m.bin").stat().st_size
    assert _cosine(dsov.run_openvino(tmp_path / "m.xml", files["x"]), files["fake_quant"]) >= 0.99
    assert ds.benchmark(tmp_path / "m.xml", runtime="openvino", input_shape=(1, 3, 16, 16), min_seconds=0.05).runs >= 20
    with pytest.raises(ds.ExportError, match=r"\.xml"):
        dsov.export_openvino(files["model"], tmp_path / "m.onnx", example_input=files["x"])
    with pytest.raises(ds.ConfigError, match="must be .onnx"):
        ds.benchmark(tmp_path / "m.xml", runtime="onnxruntime")


def test_an_unknown_runtime_names_the_valid_ones(files):
    with pytest.raises(ds.ConfigError, match="choose one of onnxruntime, openvino, openvino-bf16, torch"):
        ds.benchmark(files["dir"] / "fp32.onnx", runtime="tensorrt")
    with pytest.raises(ds.ConfigError, match="choose one of onnxruntime, openvino, openvino-bf16$"):
        ds.compare(files["dir"] / "fp32.onnx", files["dir"] / "fp32.onnx", runtime_b="torch")


def test_without_the_extra_openvino_runtimes_say_how_to_install_it(files, monkeypatch):
    monkeypatch.setattr(dsov, "available", lambda: False)
    with pytest.raises(ds.ExportError, match=r"pip install 'deepslim\[openvino\]'"):
        ds.benchmark(files["dir"] / "fp32.onnx", runtime="openvino")
    with pytest.raises(ds.ExportError, match="OpenVINO is not installed"):
        ds.interleave({"ov": (files["dir"] / "fp32.onnx", "openvino")})
