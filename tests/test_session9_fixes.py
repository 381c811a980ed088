"""Two defects found in session 9's review: a benchmark worker died on an exception without a message, and an
archive's activation-points record could name a calibration that static points cannot be rebuilt with."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from deepslim.compress.coding.state import check_points_record
from deepslim.errors import ModelLoadError


def test_the_benchmark_worker_answers_an_exception_without_a_message_instead_of_dying() -> None:
    # "run" before "load": the worker's own assertion fails with an empty message
    done = subprocess.run([sys.executable, "-m", "deepslim.export._worker"], input='{"run": 1}\n',
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[0]) == {"error": "AssertionError: "}


@pytest.mark.parametrize("method", ["auto", "dynamic"])
def test_a_points_record_naming_a_calibration_without_static_points_is_refused(method: str) -> None:
    record = {"method": method, "points": {"p0": {"scale": 0.1, "zero": 128, "enabled": True}}}
    with pytest.raises(ModelLoadError, match="malformed quantization points record"):
        check_points_record(record, "m.dsz")
    assert check_points_record({**record, "method": "minmax"}, "m.dsz")["method"] == "minmax"
