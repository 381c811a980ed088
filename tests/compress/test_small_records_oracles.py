"""Small pieces no other test in the mutation selection reaches: result records' JSON forms, the clustered layer's
storage bytes as the profiler counts them, the quantization points' switches, the checkpoint-segment rule and the
meta-device check — each against numbers worked out by hand."""

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import deepslim as ds
from deepslim.analysis._execution import runs_on_meta
from deepslim.analysis.training import sqrt_segments
from deepslim.compress.quantize import cluster_
from deepslim.compress.quantize._points import ActPoint, calibrate_points, disable_points_
from deepslim.compress.quantize.nonlinear import KMeansConfig
from deepslim.compress.quantize.observers import Calibration
from deepslim.export.executorch import PteResult
from deepslim.export.openvino import OpenVinoResult
from deepslim.train.loop import EvalResult
from deepslim.train.ondevice.sparse import SparseUpdatePlan


def test_an_evaluation_result_is_plain_json_with_a_copy_of_its_metrics():
    metrics = {"accuracy": 0.5, "top5": 0.9}
    r = EvalResult(accuracy=0.5, loss=1.25, samples=8, metrics=metrics, task="classification", metric="top5")
    doc = r.to_dict()
    assert doc == {"accuracy": 0.5, "loss": 1.25, "samples": 8, "task": "classification", "metric": "top5",
                   "metrics": {"accuracy": 0.5, "top5": 0.9}}  # fmt: skip
    doc["metrics"]["top5"] = 0.0
    assert r.metrics["top5"] == 0.9 and r.value == 0.9
    assert EvalResult(accuracy=0.25, loss=1.0, samples=1).value == 0.25  # no metrics: the accuracy


def test_a_sparse_update_plan_is_plain_json_with_sorted_names_and_units_as_lists():
    plan = SparseUpdatePlan(trainable=frozenset({"b.bias", "a.weight"}), budget_bytes=100, peak_bytes=90,
                            saved_bytes=40, units=(("a:weight", 2.0, 64), ("b:bias", 1.5, 8)))  # fmt: skip
    assert json.loads(json.dumps(plan.to_dict())) == {"trainable": ["a.weight", "b.bias"], "budget_bytes": 100,
                                                      "peak_bytes": 90, "saved_bytes": 40,
                                                      "units": [["a:weight", 2.0, 64], ["b:bias", 1.5, 8]]}


def test_export_results_write_their_paths_as_strings_and_every_field():
    pte = PteResult(path=Path("/x/m.pte"), size_bytes=10, max_abs_error=0.5, top1_agreement=1.0, delegated=True)
    assert pte.to_dict() == {"path": "/x/m.pte", "size_bytes": 10, "max_abs_error": 0.5, "top1_agreement": 1.0,
                             "delegated": True}  # fmt: skip
    ov = OpenVinoResult(path=Path("/x/m.xml"), size_bytes=7, max_abs_error=0.1, cosine=0.99, top1_agreement=0.5,
                        compute_layers=3, integer_layers=2)  # fmt: skip
    assert ov.to_dict() == {"path": "/x/m.xml", "size_bytes": 7, "max_abs_error": 0.1, "cosine": 0.99,
                            "top1_agreement": 0.5, "compute_layers": 3, "integer_layers": 2}  # fmt: skip


def test_a_clustered_layer_stores_packed_indices_and_its_fp32_codebook():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    cluster_(model, KMeansConfig(bits=2))
    rows = {row.name: row.weight_bytes for row in ds.profile(model, torch.randn(1, 16)).layers}
    # 128 two-bit indices (32 B) + a 4-entry fp32 codebook (16 B) + 8 fp32 biases; 24 indices (6 B) + 16 + 12
    assert rows == {"0": 32 + 16 + 32, "1": 0, "2": 6 + 16 + 12}


def test_calibrating_points_gives_each_a_fresh_observer_and_disabling_turns_them_into_identities():
    points = [ActPoint(), ActPoint()]
    calibrate_points(points, Calibration.MINMAX)
    assert all(p.observer is not None for p in points) and points[0].observer is not points[1].observer
    assert all((p.observer.method, p.observer.bits) == (Calibration.MINMAX, 8) for p in points)
    x = torch.tensor([-1.0, 0.3, 2.0])
    for p in points:
        p(x)
        p.freeze()
    assert all(p.enabled for p in points)
    model = nn.Sequential(points[0], nn.Sequential(points[1]))
    assert not torch.equal(model(torch.tensor([0.3001, 1.0])), torch.tensor([0.3001, 1.0]))  # quantizes
    disable_points_(model)
    assert not points[0].enabled and not points[1].enabled
    assert torch.equal(model(torch.tensor([0.3001, 1.0])), torch.tensor([0.3001, 1.0]))


@pytest.mark.parametrize(("layers", "segments"), [(0, 1), (1, 1), (2, 2), (4, 2), (5, 3), (9, 3), (10, 4),
                                                  (100, 10), (101, 11)])
def test_checkpoint_segments_are_the_ceiling_of_the_square_root_and_at_least_one(layers, segments):
    assert sqrt_segments(layers) == segments == max(1, math.ceil(math.sqrt(layers)))


def test_a_model_runs_on_meta_when_a_parameter_a_buffer_or_an_input_is_on_meta():
    assert not runs_on_meta(nn.BatchNorm1d(2), [torch.zeros(1, 2)])
    assert runs_on_meta(nn.Linear(2, 2, device="meta"), [])
    bn = nn.BatchNorm1d(2, affine=False)
    bn.running_mean = torch.zeros(2, device="meta")
    assert runs_on_meta(bn, [])
    assert runs_on_meta(nn.Identity(), [torch.zeros(1), torch.zeros(1, device="meta")])
    assert not runs_on_meta(nn.Identity(), [])
