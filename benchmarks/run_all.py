"""Run every benchmark and store its JSON under benchmarks/results/ (the numbers BENCHMARKS.md quotes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
BENCHMARKS = ["profile_speed", "pruning_speed", "pruning_accuracy", "quantization", "quantization_shapes",
              "deep_compression", "speed"]


def main() -> int:
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    failed = []
    for name in BENCHMARKS:
        print(f"== {name}", flush=True)
        code = subprocess.call([sys.executable, str(HERE / f"{name}.py"), "--json", str(out / f"{name}.json")])
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
