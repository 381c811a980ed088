"""A whole model's nodes as ONNX Runtime runs them, each timed alone: ``python PATH/TO/_node_timer.py``.

The latency table's layers are timed as one-layer graphs, but in a whole graph ONNX Runtime runs other kernels: its
NCHWc convolutions with fused activations and sums, reorders only where the layout changes, integer convolutions in
NHWC with transposes only where the precision changes, float convolutions next to integer ones in plain NCHW. This
child process reads one exported model, lets ONNX Runtime optimize it with the session options of an end-to-end
measurement, runs it once to record every intermediate tensor, and writes each node of the *optimized* graph as a
one-node model with its real inputs (``split``); ``time`` times such files with optimizations off (they are already
what the runtime runs), interleaved as ``_timer.py`` does. A node's key covers its operator, attributes and input
types and shapes, not weight values. Imports only numpy, onnx and onnxruntime.

stdin: ``{"cmd": "split", "model": PATH, "shape": [...], "threads": n, "work": DIR}`` ->
``{"nodes": [{"key", "op", "file", "feeds"}, ...]}``; ``{"cmd": "time", "files": [[model, feeds], ...],
"threads": n, "rounds": r, "block": b, "window_s": w}`` -> ``{"min_ms": [...], "median_ms": [...], "overhead_ms": t,
"graph_node_ms": d}`` (``t``: one run of a trivial one-node graph, which every one-node timing includes once and a
whole graph only once in all; ``d``: what one more node costs inside a graph, which the subtraction of ``t`` takes
off every entry). Runs use IO binding (inputs and outputs bound once), as nodes inside a graph exchange no Python
arrays.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from typing import Any

if __package__:  # imported from the package (tests)
    from deepslim.search._timer import pace
else:  # run as a script: its directory is on the path, and the child imports no deepslim
    from _timer import pace  # type: ignore[no-redef]


def _session(path: str, threads: int, optimize: bool, save: str | None = None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.log_severity_level = 3
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)  # fmt: skip
    if save:
        opts.optimized_model_filepath = save
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def split(model: str, shape: list[int], threads: int, work: str) -> dict[str, Any]:
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    optimized = os.path.join(work, "optimized.onnx")
    _session(model, threads, True, optimized)
    graph_model = onnx.load(optimized)
    g = graph_model.graph
    inits = {t.name: t for t in g.initializer}
    produced = [o for n in g.node for o in n.output if o]
    probe = onnx.ModelProto()
    probe.CopyFrom(graph_model)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend([helper.make_empty_tensor_value_info(o) for o in produced if o not in known])
    probe_path = os.path.join(work, "probe.onnx")
    onnx.save(probe, probe_path)
    sess = _session(probe_path, threads, False)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    values = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {g.input[0].name: x}), strict=True))
    values[g.input[0].name] = x
    nodes = []
    for i, node in enumerate(g.node):
        feeds = {n: values[n] for n in node.input if n and n not in inits}
        ins = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
               for n, v in feeds.items()]  # fmt: skip
        outs = [helper.make_tensor_value_info(o, helper.np_dtype_to_tensor_dtype(values[o].dtype),
                                              list(values[o].shape)) for o in node.output if o]  # fmt: skip
        weights = [inits[n] for n in dict.fromkeys(node.input) if n in inits]  # once each, even if used twice
        one = helper.make_graph([node], f"node{i}", ins, outs, initializer=weights)
        m = helper.make_model(one, opset_imports=list(graph_model.opset_import))
        m.ir_version = graph_model.ir_version
        file, feed_file = os.path.join(work, f"node{i}.onnx"), os.path.join(work, f"node{i}.npz")
        onnx.save(m, file)
        np.savez(feed_file, **feeds)
        spec = {"op": node.op_type, "domain": node.domain,
                "attrs": sorted((a.name, str(helper.get_attribute_value(a))) for a in node.attribute),
                "inputs": [[str(values[n].dtype), list(values[n].shape)] if n in values else
                           [str(numpy_helper.to_array(inits[n]).dtype), list(inits[n].dims)] if n in inits else None
                           for n in node.input]}  # fmt: skip
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]
        nodes.append({"key": f"{node.op_type}:{digest}", "op": node.op_type, "file": file, "feeds": feed_file})
    return {"nodes": nodes}


CHAIN = 65  # Identity nodes in the graph whose time, less the trivial graph's, gives one more node's cost in a graph


def _trivial(path: str, nodes: int) -> None:
    """A chain of ``nodes`` Identity nodes on a 1-element float tensor, written at ``path``."""
    import onnx
    from onnx import TensorProto, helper

    names = ["x"] + [f"t{i}" for i in range(1, nodes)] + ["y"]
    chain = [helper.make_node("Identity", [a], [b]) for a, b in zip(names[:-1], names[1:], strict=True)]
    graph = helper.make_graph(chain, "trivial", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)


def _bound(sess: Any, feed: dict[str, Any]) -> tuple[Any, list[Any]]:
    """``sess``'s inputs and outputs bound once (IO binding): a run then converts no array to or from Python, as a
    node inside a whole graph does not — with plain ``run`` each timing carried that conversion, and a node's
    outputs' copy, which the trivial graph's one-element tensors do not cancel. Returns the binding and the bound
    values, which the caller keeps as long as it runs the binding: a CPU OrtValue made from a numpy array points
    into the array (the OrtValue holds it), and the binding of some ONNX Runtime releases holds no reference to what
    is bound (1.32's does) — there a run would read and write freed memory."""
    import numpy as np
    import onnxruntime as ort

    binding, values = sess.io_binding(), []
    for name, value in feed.items():
        values.append(ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value)))
        binding.bind_ortvalue_input(name, values[-1])
    for out, value in zip(sess.get_outputs(), sess.run(None, feed), strict=True):
        values.append(ort.OrtValue.ortvalue_from_numpy(np.empty_like(value)))
        binding.bind_ortvalue_output(out.name, values[-1])
    return binding, values


def time_nodes(files: list[tuple[str, str]], *, threads: int, rounds: int, block: int, work: str,
               window_s: float = 0.0) -> dict[str, Any]:  # fmt: skip
    """Each one-node file timed (minimum over ``rounds`` × ``block`` runs, rounds spread over ``window_s`` seconds,
    as ``_timer.py`` spreads them), the trivial graph's time (``overhead_ms``) and one more node's cost inside a
    graph (``graph_node_ms``: a chain of :data:`CHAIN` Identity nodes less the one-node trivial graph, per node) —
    what each node of a whole graph pays on top of its entry, since an entry is its one-node graph's time less the
    trivial graph's, which includes one node."""
    import numpy as np

    chain = [os.path.join(work, "trivial.onnx"), os.path.join(work, "chain.onnx")]
    _trivial(chain[0], 1)
    _trivial(chain[1], CHAIN)
    # (session, (binding, its bound values)): the values live as long as ``runs`` (see :func:`_bound`)
    runs = [(s, _bound(s, {"x": np.zeros(1, np.float32)})) for s in (_session(f, threads, False) for f in chain)]
    for model, feeds in files:
        with np.load(feeds) as data:
            sess = _session(model, threads, False)
            runs.append((sess, _bound(sess, {k: data[k] for k in data.files})))
    for sess, (binding, _) in runs:
        for _ in range(2):  # warm-up
            sess.run_with_iobinding(binding)
    times: list[list[float]] = [[] for _ in runs]
    start = time.perf_counter()
    for r in range(rounds):
        pace(start, r, rounds, window_s)  # as _timer.py spreads its rounds
        for i in (range(len(runs)) if r % 2 == 0 else reversed(range(len(runs)))):
            sess, (binding, _) = runs[i]
            for _ in range(block):
                t0 = time.perf_counter()
                sess.run_with_iobinding(binding)
                times[i].append((time.perf_counter() - t0) * 1e3)
    mins = [float(np.min(t)) for t in times]
    return {"overhead_ms": mins[0], "graph_node_ms": max(0.0, (mins[1] - mins[0]) / (CHAIN - 1)), "min_ms": mins[2:],
            "median_ms": [float(np.median(t)) for t in times[2:]]}  # fmt: skip


def main() -> None:
    cmd = json.load(sys.stdin)
    if cmd["cmd"] == "split":
        result = split(cmd["model"], cmd["shape"], cmd.get("threads", 1), cmd["work"])
    else:
        result = time_nodes([(m, f) for m, f in cmd["files"]], threads=cmd.get("threads", 1),
                            rounds=cmd.get("rounds", 5), block=cmd.get("block", 5), work=cmd["work"],
                            window_s=float(cmd.get("window_s", 0.0)))  # fmt: skip
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
