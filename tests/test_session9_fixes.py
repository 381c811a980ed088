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


def test_fine_tuning_after_static_int8_trains_every_layer_and_the_forward_stays_the_codes() -> None:
    import copy

    import torch

    import deepslim as ds

    torch.manual_seed(0)
    data = ds.load_data("digits")
    model = ds.quantize_(copy.deepcopy(ds.create_model("lenet5", input_size=8)),
                         ds.LinearQuantConfig(calibration="minmax"), calib_data=data.calib)  # fmt: skip
    x, y = next(iter(data.train))
    with torch.no_grad():
        codes = model(x)
    out = model(x)
    assert torch.equal(out, codes)  # the straight-through path changes gradients only
    torch.nn.functional.cross_entropy(out, y).backward()
    first = model.features[0].weight.grad
    assert first is not None and float(first.abs().sum()) > 0  # was exactly 0: the input rounding stopped it
