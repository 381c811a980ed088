"""Run every benchmark and store its JSON under benchmarks/results/ (the numbers BENCHMARKS.md quotes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
BENCHMARKS = ["profile_speed", "pruning_speed", "pruning_accuracy", "quantization", "quantization_shapes",
              "deep_compression", "speed", "int8_api_path", "openvino_runtime", "transformer_encoder", "generality"]
RESULTS = {"openvino_runtime": "openvino"}  # a script named openvino.py would shadow the package it measures


def main() -> int:
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    failed = []
    for name in BENCHMARKS:
        print(f"== {name}", flush=True)
        result = out / f"{RESULTS.get(name, name)}.json"
        code = subprocess.call([sys.executable, str(HERE / f"{name}.py"), "--json", str(result)])
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
