"""A benchmark worker: one ONNX Runtime session in its own process, driven by JSON lines on stdin.

Running each variant in its own process keeps sessions from disturbing each other (an idle session's spinning
threads doubled a neighbour's latency when two were alternated in one process) and gives each its own peak memory.
Commands: {"load": path, "input": npy, "threads": n, "spinning": bool} -> {"ok": true, "rss_before": bytes};
{"run": k} -> {"times_ms": [...]}; {"quit": true}. Imports only numpy and onnxruntime.
"""

from __future__ import annotations

import json
import sys
import time


def _status_bytes(field: str) -> int:
    """VmRSS (resident now) or VmHWM (peak resident) of this process; unlike ru_maxrss, VmHWM starts afresh at
    exec, so the parent's memory is not counted."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    import numpy as np

    sess = feed = None
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if "load" in cmd:
                import onnxruntime as ort

                before = _status_bytes("VmRSS")
                opts = ort.SessionOptions()
                if cmd.get("threads"):
                    opts.intra_op_num_threads = cmd["threads"]
                opts.inter_op_num_threads = 1
                if not cmd.get("spinning", True):
                    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
                sess = ort.InferenceSession(cmd["load"], opts, providers=["CPUExecutionProvider"])
                x = np.load(cmd["input"])
                feed = {sess.get_inputs()[0].name: x}
                sess.run(None, feed)
                reply = {"ok": True, "rss_before": before}
            elif "run" in cmd:
                times = []
                for _ in range(cmd["run"]):
                    t0 = time.perf_counter()
                    sess.run(None, feed)
                    times.append((time.perf_counter() - t0) * 1e3)
                reply = {"times_ms": times, "peak_rss": _status_bytes("VmHWM")}
            else:
                return
        except Exception as exc:  # reported to the parent, which raises a DeepSlimError
            reply = {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
