"""deepslim._hooks.hooked: hooks for one block, gone afterwards even when the forward raises — and every measurement
that runs the user's model once with hooks leaves none behind when that forward fails (the user's own hooks stay)."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from deepslim import LinearQuantConfig, quantize_
from deepslim._hooks import hooked
from deepslim.analysis._tracer import Tracer, run
from deepslim.analysis._training_trace import SavedTracer, trace_saved
from deepslim.compress.prune import _refit
from deepslim.compress.quantize import _dynamic, _fidelity, _hooked_points
from deepslim.compress.quantize._fidelity import LayerNoise
from deepslim.errors import ConfigError
from deepslim.export import _parity
from deepslim.search.latency import layer_keys
from deepslim.train.ondevice.convert import _block_shapes
from deepslim.train.student import Attentions

lowrank = importlib.import_module("deepslim.compress.lowrank")
depth = importlib.import_module("deepslim.compress.prune.depth")
distill = importlib.import_module("deepslim.train.distill")  # the module (deepslim.train.distill is the function)


X = torch.randn(2, 3, 8, 8)


class Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


def _model(boom: bool = True, quantized: bool = False) -> nn.Sequential:
    """A small conv net; ``boom``: its last layer raises; ``quantized``: int8 (the layers the fidelity check hooks)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    if quantized:
        quantize_(model, LinearQuantConfig(bits=8), calib_data=[(X,)])
    if boom:
        model.append(Boom())
    return model


def _count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_the_hooks_run_in_the_block_pre_before_forward_with_their_module_names_and_are_gone_after():
    model = _model(boom=False)
    calls: list[tuple[str, str]] = []
    with hooked({"0": model[0], "3": model[3]}, pre=lambda n: lambda m, a: calls.append(("pre", n)),
                forward=lambda n: lambda m, a, o: calls.append(("forward", n))):  # fmt: skip
        assert _count(model) == 4
        model(X)
    assert calls == [("pre", "0"), ("forward", "0"), ("pre", "3"), ("forward", "3")]
    model(X)
    assert len(calls) == 4 and _count(model) == 0


def test_named_modules_pairs_work_like_a_mapping():
    model = _model(boom=False)
    seen: list[str] = []
    with hooked(model.named_modules(), forward=lambda n: lambda m, a, o: seen.append(n)):
        model(X)
    assert seen == ["0", "1", "2", "3", ""]  # every module, the model itself ("") last to finish
    assert _count(model) == 0


def test_a_raising_forward_leaves_no_hooks_and_the_users_own_hook_stays():
    model = _model()
    mine = model[3].register_forward_hook(lambda m, a, o: None)
    ran: list[str] = []
    with pytest.raises(RuntimeError, match="boom"), hooked(dict(model.named_children()),
                                                          pre=lambda n: lambda m, a: ran.append(n)):  # fmt: skip
        model(X)
    assert ran == ["0", "1", "2", "3", "4"]  # the hooks were there up to the failing layer
    assert _count(model) == 1 and list(model[3]._forward_hooks) == [mine.id]


def test_a_failing_registration_removes_the_hooks_already_registered():
    model = _model(boom=False)

    def factory(name: str):
        if name == "3":
            raise ValueError("no hook for 3")
        return lambda m, a, o: None

    with pytest.raises(ValueError, match="no hook for 3"), hooked(dict(model.named_children()), forward=factory):
        pass
    assert _count(model) == 0


def _channel_stats(model: nn.Sequential, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_dynamic, "ffn_pairs", lambda model, layers: [("0", "3")])  # a "feed-forward block"
    _dynamic.channel_stats(model, ["0", "3"], [(X,)], 1)


def _fidelity_measure(model: nn.Sequential, monkeypatch: pytest.MonkeyPatch) -> None:
    _fidelity.measure(model, {"3": model[3]}, [(X,)], [], [], 0.99, 0.9, points={"p": model[1]})


def _worst_layer(model: nn.Sequential, monkeypatch: pytest.MonkeyPatch) -> None:
    """The parity check's worst-layer probe; a graph whose Conv and Gemm read layers 0 and 3's weights stands in for
    the exported file (the forward raises before the file is read again)."""
    import onnx
    from onnx import helper

    graph = helper.make_graph([helper.make_node("Conv", ["x", "0.weight"], ["conv"]),
                               helper.make_node("Gemm", ["flat", "3.weight"], ["y"])], "fake", [], [])  # fmt: skip
    monkeypatch.setattr(onnx, "load", lambda path: helper.make_model(graph))
    _parity._worst_layer(model, Path("unread.onnx"), (X,))


def _captured(model: nn.Sequential, monkeypatch: pytest.MonkeyPatch) -> None:
    with distill._captured(model, ["0", "3"], "student"):
        model(X)


def _encoder(**projections: nn.Module) -> SimpleNamespace:
    """An encoder as Attentions reads one: a single layer whose self-attention holds the given projections."""
    attn = nn.Module()
    for name, m in projections.items():
        setattr(attn, name, m)
    return SimpleNamespace(encoder=SimpleNamespace(layer=[SimpleNamespace(attention=SimpleNamespace(self=attn))]))


def _attentions(model: nn.Sequential, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relation distillation's query/key/value capture, with layers 0, 3 and the ReLU standing in for them."""
    with Attentions(_encoder(query=model[0], key=model[3], value=model[1]), [0]):
        model(X)


SITES = {
    "search.latency.layer_keys": lambda model, mp: layer_keys(model, X, {}),
    "lowrank._positions": lambda model, mp: lowrank._positions(model, {"0": model[0], "3": model[3]}, X),
    "quantize._hooked_points._probe": lambda model, mp: _hooked_points._probe(model, (X,)),
    "quantize._dynamic.channel_stats": _channel_stats,
    "quantize._fidelity.measure": _fidelity_measure,
    "analysis._tracer.run": lambda model, mp: run(model, X, Tracer(set())),
    "analysis._training_trace.trace_saved": lambda model, mp: trace_saved(model, X, SavedTracer(set())),
    "train.distill._captured": _captured,
    "train.ondevice.convert._block_shapes": lambda model, mp: _block_shapes(model, {"0": model[0]}, X),
    "export._parity._worst_layer": _worst_layer,
    # the capture hooks sit on the raising layer itself: an earlier one would stop the forward before it
    "compress.prune._refit.targets": lambda model, mp: _refit.targets(model, [model[4]], [X], lambda b: b),
    "compress.prune._refit.forward_order": lambda model, mp: _refit.forward_order(model, [model[0], model[3]], X,
                                                                                  lambda b: b),  # fmt: skip
    "train.student.Attentions": _attentions,
    "compress.prune.depth._io_shapes": lambda model, mp: depth._io_shapes(model, X),
    "compress.prune.depth._importance": lambda model, mp: depth._importance(model, ["1"], X, [(X, None)]),
}


@pytest.mark.parametrize("site", SITES)
def test_a_measurement_whose_forward_raises_leaves_no_hooks_on_the_users_model(site, monkeypatch):
    model = _model(quantized="fidelity" in site)
    model[0].register_forward_pre_hook(lambda m, a: None)  # the user's own: it must stay
    before = _count(model)
    with pytest.raises(RuntimeError, match="boom"):
        SITES[site](model, monkeypatch)
    assert _count(model) == before >= 1


def test_the_refit_capture_hooks_pre_and_forward_on_one_module_and_leaves_none():
    model = _model(boom=False)
    model[0].register_forward_pre_hook(lambda m, a: None)  # the user's own: it must stay
    inputs = _refit._capture(model, model[3], [X], True, lambda b: b)
    (outputs,) = _refit.targets(model, [model[3]], [X], lambda b: b)
    with torch.no_grad():
        assert torch.allclose(inputs, model[:3](X).double()) and torch.allclose(outputs, model(X).double())
    assert _count(model) == 1
    assert _refit.forward_order(model, [model[3], model[0]], X, lambda b: b) == [1, 0] and _count(model) == 1


def test_attentions_capture_each_projection_and_a_missing_one_registers_nothing():
    model = _model(boom=False)
    with Attentions(_encoder(query=model[0], key=model[3], value=model[1]), [0]) as captured:
        assert _count(model) == 3
        model(X)
    assert _count(model) == 0
    out = captured.outs[0]
    assert out["query"].shape == (2, 4, 6, 6) and out["value"].shape == (2, 4, 6, 6) and out["key"].shape == (2, 5)
    with pytest.raises(AttributeError, match="value"), Attentions(_encoder(query=model[0], key=model[3]), [0]):
        pass  # query and key are found before value is missed: neither may keep a hook
    assert _count(model) == 0


def test_a_hook_that_refuses_the_model_leaves_no_hooks_either():
    model = _model(boom=False)
    with pytest.raises(ConfigError, match="does not map a 4-D image tensor"):
        _block_shapes(model, {"3": model[3]}, X)  # the hook itself raises: a linear layer is no image block
    assert _count(model) == 0


def test_layer_noise_measures_only_while_installed():
    model = _model(boom=False, quantized=True)
    before = _count(model)
    noise = LayerNoise({"3": model[3]}, {"relu": model[1]})
    with noise.installed():
        assert _count(model) == before + 2
        model(X)
    assert noise.signal["3"] > 0 and noise.noise["3"] > 0  # int8 against its float output on the same input
    with torch.no_grad():
        y = model[0](X).double()  # the ReLU's input; as a "point", its output is measured against it
    assert noise.signal["relu"] == pytest.approx(float(y.pow(2).sum()))
    assert noise.noise["relu"] == pytest.approx(float(y.clamp(max=0).pow(2).sum())) and noise.noise["relu"] > 0
    signal = dict(noise.signal)
    model(X)
    assert noise.signal == signal and _count(model) == before
