"""Run every benchmark and store its JSON under benchmarks/results/ (the numbers BENCHMARKS.md quotes); the
accuracy benchmarks run a second time on Fashion-MNIST."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
BENCHMARKS = ["profile_speed", "pruning_speed", "pruning_accuracy", "quantization", "quantization_shapes",
              "deep_compression", "speed", "int8_api_path", "openvino_runtime", "transformer_encoder",
              "token_thresholds", "generality", "ondevice_training", "search", "search_workers", "ddp", "vit_tome",
              "block_view", "int8_ordinary_verbs", "int8_archive", "archive_decode"]
# result names that differ from the script's: a script named openvino.py would shadow the package it measures
RESULTS = {"openvino_runtime": "openvino", "token_thresholds": "transformer_ltp"}
# benchmarks that also run on Fashion-MNIST (real photographs): a second run with --data, results in NAME_fashion.json
ALSO_FASHION = ("pruning_accuracy", "quantization", "deep_compression")


def main() -> int:
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    failed = []
    runs: list[tuple[str, str, list[str]]] = [(name, RESULTS.get(name, name), []) for name in BENCHMARKS]
    runs += [(name, f"{name}_fashion", ["--data", "fashion-mnist"]) for name in ALSO_FASHION]
    for name, result, extra in runs:
        print(f"== {result}", flush=True)
        code = subprocess.call([sys.executable, str(HERE / f"{name}.py"), "--json", str(out / f"{result}.json"),
                                *extra])  # fmt: skip
        if code:
            failed.append(result)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
