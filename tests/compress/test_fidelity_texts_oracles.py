"""The post-training fidelity check's arithmetic and its refusal, word for word: cosine and top-1 agreement over the
checked batches (the agreement only from 10 class-score rows on), and the message that names the noisiest layers
(an activation point is named by its layer) and each way out that applies."""

from __future__ import annotations

import math

import torch

from deepslim.compress.quantize._fidelity import Fidelity, compare, refusal

WAYS_END = ("or accept it with LinearQuantConfig(accept_low_fidelity=True) (a warning, and the numbers in "
            "quantization_report(model).fidelity)")  # fmt: skip
WORST = (("fc2 output", 12.345), ("conv1", 15.0), ("fc2", 16.0), ("head", 20.0))


def test_the_fidelity_reads_as_cosine_agreement_rows_and_the_three_noisiest_layers():
    assert str(Fidelity(0.91234, 0.75, 40, WORST, False)) == (
        "cosine 0.912, top-1 agreement 75% over 40 rows; noisiest layers: fc2 output (12.3 dB), conv1 (15.0 dB), "
        "fc2 (16.0 dB)")  # fmt: skip
    assert str(Fidelity(0.5, None, 3, (), False)) == "cosine 0.500 over 3 rows; noisiest layers: none"


def test_the_refusal_names_two_quantized_layers_once_each_and_every_way_out():
    fid = Fidelity(0.91234, 0.75, 40, WORST, False)
    text = refusal(fid, per_channel=False, calibration="minmax", min_cosine=0.98, weight_only=False,
                   layers=["conv1", "fc2", "head"], min_agreement=0.8)  # fmt: skip
    assert text == (
        "the quantized model does not compute the float model on the calibration data (cosine 0.912, top-1 "
        "agreement 75% over 40 rows; noisiest layers: fc2 output (12.3 dB), conv1 (15.0 dB), fc2 (16.0 dB); "
        "thresholds: cosine 0.98, top-1 agreement 80%); the model is left in float. Ways out: keep the noisiest "
        "layers in float with overrides={'fc2': None, 'conv1': None}; per_channel=True; calibration='percentile' "
        f"or 'mse' (clips activation outliers); activation_bits=None (weight-only); {WAYS_END}")  # fmt: skip


def test_the_refusal_leaves_out_the_ways_that_do_not_apply():
    fid = Fidelity(0.5, None, 3, WORST, False)
    # weight-only, per channel, not minmax; only "head" is a quantized layer; no agreement threshold without one
    text = refusal(fid, per_channel=True, calibration="minmax", min_cosine=0.9, weight_only=True, layers=["head"],
                   min_agreement=0.8)  # fmt: skip
    assert text == (
        "the quantized model does not compute the float model on the calibration data (cosine 0.500 over 3 rows; "
        "noisiest layers: fc2 output (12.3 dB), conv1 (15.0 dB), fc2 (16.0 dB); thresholds: cosine 0.9); the model "
        f"is left in float. Ways out: keep the noisiest layers in float with overrides={{'head': None}}; {WAYS_END}")
    text = refusal(Fidelity(0.5, 0.25, 12, (), False), per_channel=True, calibration="mse", min_cosine=0.9,
                   weight_only=False, layers=["a"])  # fmt: skip
    assert text.endswith("thresholds: cosine 0.9); the model is left in float. Ways out: activation_bits=None "
                         f"(weight-only); {WAYS_END}")  # fmt: skip


def _scores(rows: int, cols: int, seed: int) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def test_cosine_is_over_all_outputs_and_agreement_over_class_score_rows():
    ref = [torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 3.0])]
    got = [torch.tensor([1.0, 1.0, 2.0]), torch.tensor([0.0, 3.0])]
    cos, agree, rows = compare(ref, got, [], [])
    assert math.isclose(cos, 14 / math.sqrt(14 * 15), rel_tol=1e-12) and agree is None and rows == 0
    a, b = _scores(6, 4, 0), _scores(6, 4, 1)
    c, d = _scores(5, 4, 2), _scores(5, 4, 3)
    hits = int((a.argmax(1) == b.argmax(1)).sum()) + int((c.argmax(1) == d.argmax(1)).sum())
    cos, agree, rows = compare([a.flatten(), c.flatten()], [b.flatten(), d.flatten()], [a, c], [b, d])
    assert rows == 11 and agree == hits / 11
    flat_a, flat_b = torch.cat([a.flatten(), c.flatten()]).double(), torch.cat([b.flatten(), d.flatten()]).double()
    assert math.isclose(cos, float(flat_a @ flat_b / (flat_a.norm() * flat_b.norm())), rel_tol=1e-12)


def test_agreement_needs_ten_rows_and_a_score_batch_for_every_batch():
    a, b = _scores(9, 3, 0), _scores(9, 3, 1)
    assert compare([a.flatten()], [b.flatten()], [a], [b])[1:] == (None, 9)
    a10, b10 = _scores(10, 3, 0), _scores(10, 3, 1)
    assert compare([a10.flatten()], [a10.flatten()], [a10], [a10])[1:] == (1.0, 10)
    assert compare([a10.flatten()], [b10.flatten()], [a10], [])[1:] == (None, 10)


def test_outputs_of_other_shapes_or_all_zeros_are_compared_as_such():
    assert compare([torch.ones(3)], [torch.ones(4)], [], []) == (0.0, None, 0)
    assert compare([], [], [], []) == (1.0, None, 0)  # nothing to compare: identical
    assert compare([torch.zeros(3)], [torch.zeros(3)], [], []) == (1.0, None, 0)
    assert compare([torch.zeros(3)], [torch.tensor([0.0, 1e-3, 0.0])], [], []) == (0.0, None, 0)
