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
"threads": n, "rounds": r, "block": b}`` -> ``{"min_ms": [...], "median_ms": [...], "overhead_ms": t}`` (the time
of one run of a trivial graph, which every one-node timing includes once and a whole graph only once in all).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from typing import Any


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


def time_nodes(files: list[tuple[str, str]], *, threads: int, rounds: int, block: int, work: str) -> dict[str, Any]:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    trivial = os.path.join(work, "trivial.onnx")
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "trivial", io[:1], io[1:])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), trivial)
    runs = [(_session(trivial, threads, False), {"x": np.zeros(1, np.float32)})]
    for model, feeds in files:
        with np.load(feeds) as data:
            runs.append((_session(model, threads, False), {k: data[k] for k in data.files}))
    for sess, feed in runs:
        for _ in range(2):  # warm-up
            sess.run(None, feed)
    times: list[list[float]] = [[] for _ in runs]
    for r in range(rounds):
        for i in (range(len(runs)) if r % 2 == 0 else reversed(range(len(runs)))):
            sess, feed = runs[i]
            for _ in range(block):
                t0 = time.perf_counter()
                sess.run(None, feed)
                times[i].append((time.perf_counter() - t0) * 1e3)
    mins = [float(np.min(t)) for t in times]
    return {"overhead_ms": mins[0], "min_ms": mins[1:], "median_ms": [float(np.median(t)) for t in times[1:]]}


def main() -> None:
    cmd = json.load(sys.stdin)
    if cmd["cmd"] == "split":
        result = split(cmd["model"], cmd["shape"], cmd.get("threads", 1), cmd["work"])
    else:
        result = time_nodes([(m, f) for m, f in cmd["files"]], threads=cmd.get("threads", 1),
                            rounds=cmd.get("rounds", 5), block=cmd.get("block", 5), work=cmd["work"])  # fmt: skip
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
