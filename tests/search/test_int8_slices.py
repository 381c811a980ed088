"""A policy's int8 ONNX file cut from the dense export (deepslim.search.int8_slices): the toolkit's nodes and shapes,
the dense file back unchanged, the MAC count, the float probe, refusals."""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from deepslim.analysis import profile
from deepslim.errors import ConfigError, UnsupportedModelError
from deepslim.search.int8_slices import Int8Slicer, group_layers, int8_layer_keys, policy_macs
from deepslim.search.space import SearchSpace, prune_policy, quantize_policy

X = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))


class Block(nn.Module):
    def __init__(self, c: int, h: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, h, 3, padding=1, bias=False), nn.BatchNorm2d(h)
        self.conv2, self.bn2 = nn.Conv2d(h, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


def residual_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), Block(32, 48),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()  # fmt: skip
    for m in net.modules():  # non-trivial statistics: the folded biases are not zero
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.bias.data.uniform_(-1, 1)
    return net


CALIB = [(torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(2)),)]


def _int8(net: nn.Module, space: SearchSpace, policy, path) -> nn.Module:
    from deepslim.export import export_onnx

    pruned = prune_policy(net, space, policy, example_input=X)
    q = quantize_policy(pruned, space, policy, calib_data=CALIB, accept_low_fidelity=True)
    export_onnx(q, path, example_input=X)
    return q


@functools.cache
def _setup(tmp: str):
    from pathlib import Path

    net = residual_net()
    space = SearchSpace.from_model(net, X, round_to=16)
    dense = space.uniform(1.0, True)
    q = _int8(net, space, dense, Path(tmp) / "dense.onnx")
    return net, space, dense, Int8Slicer(Path(tmp) / "dense.onnx", q, space)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return _setup(str(tmp_path_factory.mktemp("slices")))


def _nodes_and_shapes(path):
    import onnx

    m = onnx.load(str(path))
    return [n.op_type for n in m.graph.node], sorted(list(t.dims) for t in m.graph.initializer)


def _run(path) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: X.numpy()})[0]


def test_the_groups_layers_are_read_from_the_dependency_graph(setup):
    _, space, _, _ = setup
    found = group_layers(space)
    assert found["0"].outs == {"0", "3.conv2"} and found["0"].ins == {"3.conv1", "6"}
    assert found["3.conv1"].outs == {"3.conv1"} and found["3.conv1"].ins == {"3.conv2"}


def test_a_cut_file_has_the_toolkits_nodes_and_shapes_for_the_same_policy(setup, tmp_path):
    net, space, dense, slicer = setup
    policy = replace(dense, keep={"0": 16, "3.conv1": 32})
    slicer.write(policy, tmp_path / "cut.onnx")
    _int8(net, space, policy, tmp_path / "toolkit.onnx")
    assert _nodes_and_shapes(tmp_path / "cut.onnx") == _nodes_and_shapes(tmp_path / "toolkit.onnx")
    assert _run(tmp_path / "cut.onnx").shape == (1, 10)


def test_the_dense_policy_cuts_nothing_and_computes_what_the_dense_file_computes(setup, tmp_path):
    _, _, dense, slicer = setup
    slicer.write(dense, tmp_path / "same.onnx")
    np.testing.assert_array_equal(_run(tmp_path / "same.onnx"), _run(slicer_path(slicer, tmp_path)))


def slicer_path(slicer: Int8Slicer, tmp_path):
    import onnx

    path = tmp_path / "dense_again.onnx"
    onnx.save(slicer.model, str(path))
    return path


def test_policy_macs_equal_the_pruned_models_profile(setup):
    net, space, dense, _ = setup
    keys, groups = int8_layer_keys(net, X, space), group_layers(space)
    for keep in ({"0": 16, "3.conv1": 32}, {"0": 32, "3.conv1": 16}, {"0": 32, "3.conv1": 48}):
        policy = replace(dense, keep=keep)
        assert policy_macs(keys, groups, policy) == profile(prune_policy(net, space, policy, example_input=X), X).macs


def test_a_float_probe_runs_that_layer_on_float_weights_without_their_dequantization(setup, tmp_path):
    import onnx

    _, _, dense, slicer = setup
    slicer.write(replace(dense, keep={"0": 16, "3.conv1": 32}), tmp_path / "f.onnx", floats=["3.conv1"])
    m = onnx.load(str(tmp_path / "f.onnx"))
    weights = {t.name: t for t in m.graph.initializer}
    conv = [n for n in m.graph.node if n.op_type == "Conv"][1]  # the second convolution: 3.conv1
    assert weights[conv.input[1]].data_type == onnx.TensorProto.FLOAT and list(weights[conv.input[1]].dims) == [
        32, 16, 3, 3]
    assert sum(n.op_type == "DequantizeLinear" for n in m.graph.node) == sum(
        n.op_type == "DequantizeLinear" for n in slicer.model.graph.node) - 2  # its weight's and bias's
    assert _run(tmp_path / "f.onnx").shape == (1, 10)


def test_unknown_layers_and_groups_and_depthwise_groups_are_refused(setup, tmp_path):
    _, space, dense, slicer = setup
    with pytest.raises(ConfigError, match="'nope' is not"):
        slicer.write(dense, tmp_path / "x.onnx", floats=["nope"])
    with pytest.raises(ConfigError, match="'3.conv1' is not chosen"):
        slicer.write(replace(dense, keep={"0": 16}), tmp_path / "x.onnx")
    depthwise = replace(space.groups[0], description="a out ⇒ b (depthwise) ⇒ c in (8 channels)")
    with pytest.raises(UnsupportedModelError, match="depthwise"):
        group_layers(replace(space, groups=(depthwise,)))


def test_two_layers_with_identical_int8_codes_are_refused_as_indistinguishable_not_reported_missing():
    from onnx import TensorProto, helper, numpy_helper

    from deepslim.errors import ExportError
    from deepslim.search.int8_slices import _find_layers

    codes = np.arange(-8, 8, dtype=np.int8).reshape(4, 4) // 3  # not symmetric
    inits = [numpy_helper.from_array(codes, "w_a"), numpy_helper.from_array(codes.copy(), "w_b")]
    inits += [numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.int8(0), "z")]
    nodes = [helper.make_node("DequantizeLinear", [f"w_{n}", "s", "z"], [f"f_{n}"]) for n in "ab"]
    nodes += [helper.make_node("MatMul", ["x", "f_a"], ["y"]), helper.make_node("MatMul", ["y", "f_b"], ["out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])], inits)  # fmt: skip
    model = helper.make_model(graph)
    assert set(_find_layers(model, {"a": codes}).keys()) == {"a"}  # one layer of these codes: found (twice, same)
    with pytest.raises(ExportError, match="layers a and b have identical int8 weight codes"):
        _find_layers(model, {"a": codes, "b": codes.copy()})


def test_every_int8_layer_gets_the_time_of_the_node_onnx_runtime_ran_for_it(setup, tmp_path):
    from deepslim.analysis.onnx_profile import time_onnx
    from deepslim.search.int8_slices import layer_times

    _, _, dense, slicer = setup
    policy = replace(dense, keep={"0": 16, "3.conv1": 32})
    slicer.write(policy, tmp_path / "p.onnx")
    nodes = time_onnx(tmp_path / "p.onnx", input_shape=tuple(X.shape), runs=3, warmup=1).nodes
    found = layer_times([(n.name, n.time_us / 1e3) for n in nodes], slicer.node_names())
    assert set(found) == set(slicer.layers) == {"0", "3.conv1", "3.conv2", "6"}
    assert all(ms > 0 for ms in found.values())
    weighted = {"QLinearConv", "QGemm", "Conv", "Gemm", "MatMulInteger", "QLinearMatMul"}
    assert {n.op_type for n in nodes if any(n.name.startswith(slicer.node_names()[k]) for k in found)} <= weighted


def test_a_fused_node_counts_for_the_layer_whose_node_name_is_its_longest_prefix():
    from deepslim.search.int8_slices import layer_times

    nodes = {"a": "node_Conv_4", "b": "node_Conv_48"}
    executed = [("node_Conv_48_token_1", 1.0), ("node_Conv_4_token_2", 2.0), ("node_Conv_4", 0.5), ("Transpose", 9.0),
                ("node_Conv_40", 7.0)]  # fmt: skip
    assert layer_times(executed, nodes) == {"b": 1.0, "a": 2.5}


def test_a_groups_time_per_mac_is_its_layers_time_over_their_macs_in_the_pruned_model(setup):
    from deepslim.search.int8_slices import group_time_per_mac

    net, space, dense, _ = setup
    keys, groups = int8_layer_keys(net, X, space), group_layers(space)
    policy = replace(dense, keep={"0": 16, "3.conv1": 48})
    layers = {lp.name: lp.macs for lp in profile(prune_policy(net, space, policy, example_input=X), X).layers}
    layer_ms = {"0": 3.0, "3.conv1": 2.0, "3.conv2": 1.0, "6": 0.5}
    found = group_time_per_mac(layer_ms, keys, groups, policy)
    # group "0": conv 0 and 3.conv2 out, 3.conv1 and the linear 6 in; group "3.conv1": 3.conv1 out, 3.conv2 in
    assert found["0"] == pytest.approx(6.5 / sum(layers[n] for n in ("0", "3.conv1", "3.conv2", "6")))
    assert found["3.conv1"] == pytest.approx(3.0 / (layers["3.conv1"] + layers["3.conv2"]))
    assert group_time_per_mac({"6": 1.0}, keys, groups, policy)["3.conv1"] == 0.0  # no timed layer: no time


def test_a_group_profile_gives_every_group_a_positive_time_per_mac(setup, tmp_path):
    net, space, dense, slicer = setup
    keys = int8_layer_keys(net, X, space)
    found = slicer.group_profile(replace(dense, keep={"0": 16, "3.conv1": 32}), tmp_path / "g.onnx", keys,
                                 input_shape=tuple(X.shape), runs=3)  # fmt: skip
    assert set(found) == {"0", "3.conv1"} and all(v > 0 for v in found.values())
    assert (tmp_path / "g.onnx").is_file()


def _optimized_ops(path) -> dict[str, int]:
    """The op types of ONNX Runtime's optimized graph of ``path`` (one thread, every optimization) and their counts;
    a node with a fused activation counts as ``op[activation]`` (FusedConv[Relu], an NCHWc Conv[Relu])."""
    import collections

    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.log_severity_level = 1, 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(path) + ".opt"
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ops: collections.Counter[str] = collections.Counter()
    for n in onnx.load(str(path) + ".opt").graph.node:
        act = [a.s.decode() for a in n.attribute if a.name == "activation"]
        ops[n.op_type + (f"[{act[0]}]" if act else "")] += 1
    return dict(ops)


@pytest.mark.parametrize("layer", ["3.conv2", "6", "3.conv1"])
def test_a_float_probes_optimized_graph_and_outputs_are_the_toolkits_mixed_exports(setup, tmp_path, layer):
    # 3.conv2 reads conv1's output after a ReLU the int8 export folded into its quantizer: the probe reads it
    # rectified (FusedConv[Relu], as the toolkit's export), without the quantize-dequantize pair it no longer reads
    # (ONNX Runtime kept and ran it; session 16's review); the linear 6 reads a flatten, no ReLU; 3.conv1's input
    # pair is the residual addition's too, a quantization point the toolkit's float layer reads as well
    net, space, dense, slicer = setup
    policy = replace(dense, keep={"0": 16, "3.conv1": 32}, int8={**dense.int8, layer: False})
    slicer.write(policy, tmp_path / "cut.onnx", floats=[layer])
    _int8(net, space, policy, tmp_path / "toolkit.onnx")
    assert _optimized_ops(tmp_path / "cut.onnx") == _optimized_ops(tmp_path / "toolkit.onnx")
    same = replace(dense, int8=policy.int8)  # no channel cut: the same weights, and (but for the cut file's
    slicer.write(same, tmp_path / "cut_all.onnx", floats=[layer])  # float layer) the same quantizers
    _int8(net, space, same, tmp_path / "toolkit_all.onnx")
    np.testing.assert_allclose(_run(tmp_path / "cut_all.onnx"), _run(tmp_path / "toolkit_all.onnx"), atol=0.02)


def test_a_float_probe_runs_in_float_in_onnx_runtime_as_the_toolkits_mixed_export_does(setup, tmp_path):
    # with only its weights dequantized, ONNX Runtime fused the layer back into a QLinearConv (session 16: the
    # probe measured an int8 file, the toolkit's mixed export of the same policy ran 28 % slower)
    net, space, dense, slicer = setup
    policy = replace(dense, keep={"0": 16, "3.conv1": 32}, int8={**dense.int8, "3.conv2": False})
    slicer.write(policy, tmp_path / "cut.onnx", floats=["3.conv2"])
    slicer.write(replace(policy, int8=dense.int8), tmp_path / "int8.onnx")
    cut, int8 = (_optimized_ops(tmp_path / f) for f in ("cut.onnx", "int8.onnx"))
    # the layer reads float, so the layer before it, whose output quantizer is gone, runs in float too
    assert cut["QLinearConv"] == int8["QLinearConv"] - 2
    assert cut["Conv"] == cut["FusedConv[Relu]"] == 1 and not any(op.endswith("Conv") for op in int8 if op[0] != "Q")
