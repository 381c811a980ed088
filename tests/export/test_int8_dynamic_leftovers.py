"""Dynamic int8's remaining edges (review of session 9, L1/L2/L4/L6/L9): a sentence encoder is judged by cosine
alone whatever its calibration batches hold; ONNX Runtime's optimizer and quantizer failing is an ExportError naming
the step, with no file (and the other refusals of the dynamic export, each tested); the dynamic parity threshold
catches a drift between the PyTorch emulation and the file that the static default lets through; an embedding
depends on its batch mates, slightly."""

import copy

import pytest
import torch
from torch import nn

import deepslim as ds
from deepslim.compress.quantize import QuantMixin, scores_are_classes
from deepslim.errors import ConfigError, ExportError
from tests.export.test_int8_dynamic_verbs import _batch, _local_bert

transformers = pytest.importorskip("transformers", reason="Hugging Face encoders need the transformers package")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    model = _local_bert(tmp_path_factory.mktemp("bert"), outliers=True)
    calib = [_batch(s) for s in range(2)]  # plain (ids, mask) tuples, 12 rows: issue 17's literal call
    ds.quantize_(model, ds.LinearQuantConfig(bits=8, min_agreement=1.0), calib_data=calib)
    return model, calib


def test_a_sentence_encoder_is_judged_by_cosine_alone_whatever_its_batches_hold(bert, tmp_path):
    model, calib = bert
    assert scores_are_classes(calib, calib[0], 2, model) is False  # the model says it: embeddings
    assert scores_are_classes(calib, calib[0], 2) is None  # the batches alone do not
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 3))
    assert scores_are_classes([(torch.randn(2, 4), torch.tensor([0, 2]))], (torch.randn(2, 4), torch.tensor([0, 2])),
                              1, mlp) is True  # fmt: skip
    fid = ds.quantization_report(model).fidelity
    assert fid is not None and fid.top1_agreement is None and fid.rows == 12 and fid.passed  # min_agreement=1.0
    result = ds.export_onnx(model, tmp_path / "m.onnx", example_input=_batch(9, n=12), calib_data=calib,
                            min_agreement=1.0)  # an argmax of embeddings would fail this  # fmt: skip
    assert result.format == "fused-int8" and result.path.is_file()


@pytest.mark.parametrize(("target", "step"), [
    ("onnxruntime.transformers.optimizer.optimize_model", "ONNX Runtime's transformer optimizer"),
    ("onnxruntime.quantization.quantize_dynamic", "ONNX Runtime's dynamic int8 quantizer"),
])
def test_onnx_runtime_failing_is_an_export_error_naming_the_step_and_no_file(bert, tmp_path, monkeypatch, target,
                                                                             step):  # fmt: skip
    import importlib

    module, _, name = target.rpartition(".")

    def broken(*args, **kwargs):
        raise KeyError("Attention_0_qkv")  # what ORT's code meets on a graph it did not expect

    monkeypatch.setattr(importlib.import_module(module), name, broken)
    with pytest.raises(ExportError, match=rf"{step} \(.*\) failed: KeyError: 'Attention_0_qkv'"):
        ds.export_onnx(bert[0], tmp_path / "m.onnx", example_input=_batch(9, n=2))
    assert not list(tmp_path.iterdir())


def test_an_embedding_depends_slightly_on_its_batch_mates(bert):
    model, _ = bert
    ids, mask = _batch(5, n=4)
    with torch.no_grad():
        alone = model(ids[:1], mask[:1])
        batched = model(ids, mask)[:1]
    diff = float((alone - batched).abs().max())
    assert 0 < diff < 1e-2  # the per-batch input range covers every row and padded token (docs/quantization.md)


def test_a_static_layer_beside_dynamic_ones_is_refused_before_anything_is_written(bert, tmp_path):
    model = copy.deepcopy(bert[0])
    model.get_submodule("encoder.encoder.layer.1.output.dense").dynamic = False
    with pytest.raises(ExportError, match=r"layer.1.output.dense is static int8 beside dynamic layers"):
        ds.export_onnx(model, tmp_path / "m.onnx", example_input=_batch(9, n=2))
    assert not list(tmp_path.iterdir())


def test_a_dynamic_layer_without_its_node_in_the_fused_graph_is_named():
    from deepslim.export._dynamic_int8 import _nodes

    attention = nn.ModuleDict({p: nn.Linear(2, 2) for p in ("query", "key", "value")})
    output = nn.ModuleDict({"dense": nn.Linear(2, 2)})
    layer = nn.ModuleDict({"attention": nn.ModuleDict({"self": attention}), "output": output})
    model = nn.ModuleDict({"enc": nn.ModuleDict({"layer": nn.ModuleList([layer])})})
    trio = {f"enc.layer.0.attention.self.{p}": object() for p in ("query", "key", "value")}
    nodes = {"enc.layer.0.attention.self": "Attention_0", "enc.layer.0.output.dense": "MatMul_3"}
    assert _nodes(model, trio, nodes) == ["Attention_0"]
    with pytest.raises(ExportError, match=r"enc.layer.1.output.dense is dynamic int8 but the fused graph has no "
                                          r"MatMul or Attention for it \(1 such layers\)"):  # fmt: skip
        _nodes(model, {**trio, "enc.layer.1.output.dense": object()}, nodes)
    with pytest.raises(ExportError, match=r"fuses .*query, .*key, .*value into one Attention: .*\(2 of them"):
        _nodes(model, {k: v for k, v in trio.items() if not k.endswith("key")}, nodes)


def test_outlier_channels_the_fused_graph_cannot_split_are_refused_with_no_file(bert, tmp_path, monkeypatch):
    from deepslim.export import _mixed_int8 as mixed

    monkeypatch.setattr(mixed, "split_outliers", lambda *args, **kwargs: {})  # no (MatMul, BiasGelu, MatMul) found
    with pytest.raises(ExportError, match=r"layer.0.output.dense's outlier channels have no feed-forward block .* "
                                          r"quantize with split_outliers=0, scale_inputs=0"):  # fmt: skip
        ds.export_onnx(bert[0], tmp_path / "m.onnx", example_input=_batch(9, n=2))
    assert not list(tmp_path.iterdir())


def test_more_split_channels_than_a_block_has_is_a_config_error_and_the_model_stays_float(tmp_path):
    model = _local_bert(tmp_path / "bert")
    with pytest.raises(ConfigError, match=r"split_outliers=64 .* must be below .*intermediate.dense's widths 64 / 32"):
        ds.quantize_(model, ds.LinearQuantConfig(bits=8, split_outliers=64), calib_data=[_batch(0)])
    assert not any(isinstance(m, QuantMixin) for m in model.modules())


def _drifted(monkeypatch, relative=0.14):
    """The file's outputs as if the PyTorch emulation had drifted from it: each batch plus seeded noise of
    ``relative`` times its norm (cosine ~0.99 to the model: what the static default 0.98 lets through)."""
    from deepslim.export import _parity

    real = _parity.run_onnx
    gen = torch.Generator().manual_seed(0)

    def drifted(path, x, threads=None):
        got = torch.from_numpy(real(path, x, threads))
        noise = torch.randn(got.shape, generator=gen)
        return (got + relative * noise * got.norm() / noise.norm()).numpy()

    monkeypatch.setattr(_parity, "run_onnx", drifted)


def test_the_dynamic_parity_default_refuses_a_drift_that_the_static_default_accepts(bert, tmp_path, monkeypatch):
    from deepslim.export.onnx import DYNAMIC_MIN_COSINE, MIN_COSINE

    assert (MIN_COSINE, DYNAMIC_MIN_COSINE) == (0.98, 0.995)  # MiniLM's file reaches 0.997-0.998 (BENCHMARKS.md)
    _drifted(monkeypatch)
    with pytest.raises(ExportError, match=r"disagrees .*cosine 0\.99\d+.*min_cosine=0\.995"):
        ds.export_onnx(bert[0], tmp_path / "m.onnx", example_input=_batch(9, n=4), calib_data=bert[1])
    assert not list(tmp_path.iterdir())
    result = ds.export_onnx(bert[0], tmp_path / "m.onnx", example_input=_batch(9, n=4), calib_data=bert[1],
                            min_cosine=0.98)  # fmt: skip
    assert 0.98 < result.cosine < 0.995
    mlp = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()
    ds.quantize_(mlp, ds.LinearQuantConfig(bits=8), calib_data=[torch.randn(32, 6)])  # static: the default is 0.98
    static = ds.export_onnx(mlp, tmp_path / "s.onnx", example_input=torch.randn(8, 6))
    assert static.format == "qdq-int8" and 0.98 < static.cosine < 0.995


def test_a_package_missing_in_a_step_is_named_with_its_install_command_not_as_a_bug(bert, tmp_path, monkeypatch):
    import sys

    from deepslim.export._torchscript import step

    missing = r"^the step needs the sympy package, which is not installed .*: pip install sympy$"
    with pytest.raises(ExportError, match=missing), step("the step"):
        raise ModuleNotFoundError("No module named 'sympy.core'", name="sympy.core")
    monkeypatch.setitem(sys.modules, "onnxruntime.transformers", None)  # as if that part of ORT were not installed
    with pytest.raises(ExportError, match=r"optimizer .*needs the onnxruntime package.*pip install onnxruntime") as e:
        ds.export_onnx(bert[0], tmp_path / "m.onnx", example_input=_batch(9, n=2))
    assert "bug" not in str(e.value) and not list(tmp_path.iterdir())
