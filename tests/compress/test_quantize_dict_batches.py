"""Hugging Face style dict batches feed quantization: the entries become the model's positional inputs in the order
of its forward parameters (entries it does not take dropped, labels too; a skipped parameter gets its default), for
the first batch (tracing), the fidelity check's batches and calibration. Checked on a real BERT classifier built
from a config (tests/_hf_models.py), whose forward is (input_ids, attention_mask, token_type_ids, ..., labels)."""

import pytest
import torch
from torch import nn

from deepslim.compress.quantize import LinearQuantConfig, quantization_report, quantize_
from deepslim.compress.quantize._fidelity import check_batches, outputs
from deepslim.compress.quantize._inputs import batch_inputs, dict_inputs, model_inputs
from deepslim.errors import DataError
from tests import _hf_models

pytestmark = pytest.mark.skipif(not _hf_models.available(), reason="transformers is not installed")


def _bert() -> nn.Module:
    """BertForSequenceClassification itself (not the test wrapper): it takes keyword inputs and returns a
    SequenceClassifierOutput."""
    return _hf_models.build("bert")[0].model.eval()


def _batches(n: int = 2, rows: int = 16) -> list[dict[str, torch.Tensor]]:
    torch.manual_seed(1)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 100, (rows, 12))
        mask = torch.ones_like(ids)
        mask[::2, 9:] = 0
        # keys in another order than forward's, one the model does not take, and labels
        out.append({"labels": torch.randint(0, 3, (rows,)), "sentence_id": torch.arange(rows),
                    "attention_mask": mask, "input_ids": ids})  # fmt: skip
    return out


def test_a_dict_batch_becomes_the_forward_parameters_in_order_without_labels_or_unknown_keys():
    model, batch = _bert(), _batches(1)[0]
    xs = model_inputs(model, batch)
    assert len(xs) == 2 and xs[0] is batch["input_ids"] and xs[1] is batch["attention_mask"]
    assert batch_inputs(model, batch, 5) == xs  # the count of a tuple batch does not apply to a dict
    with torch.no_grad():
        assert torch.equal(model(*xs).logits, model(input_ids=batch["input_ids"],
                                                    attention_mask=batch["attention_mask"]).logits)  # fmt: skip


def test_a_parameter_the_dict_skips_gets_its_default_and_trailing_ones_are_left_out():
    model, batch = _bert(), _batches(1)[0]
    tt = torch.zeros_like(batch["input_ids"])
    xs = dict_inputs(model, {"token_type_ids": tt, "input_ids": batch["input_ids"]})
    assert xs is not None and len(xs) == 3 and xs[1] is None and xs[2] is tt
    assert dict_inputs(model, {"labels": batch["labels"], "text": "no tensor"}) is None


def test_a_required_parameter_missing_before_a_given_one_is_a_data_error_naming_it():
    class Pair(nn.Module):
        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return x * mask

    with pytest.raises(DataError, match=r"the batch dict has no 'x', which Pair.forward takes before 'mask'; add it"):
        model_inputs(Pair(), {"mask": torch.ones(2, 3)})


def test_a_model_whose_forward_names_no_key_takes_the_dict_as_its_one_input():
    class TakesDict(nn.Module):
        def forward(self, batch: dict) -> torch.Tensor:
            return batch["a"] + batch["b"]

    batch = {"a": torch.ones(2), "b": torch.ones(2)}
    assert model_inputs(TakesDict(), batch) == (batch,)
    checked = check_batches([batch], 1, model=TakesDict())
    assert checked == [(batch,)] and checked.classes is None


def test_the_fidelity_check_runs_the_dict_batches_as_the_model_would_and_knows_labels_mean_classes():
    model, batches = _bert(), _batches(3)
    checked = check_batches(batches, 2, model=model, max_rows=32)
    assert len(checked) == 2 and checked.classes is True  # stops at 32 rows; integer labels: class scores
    flat, scores = outputs(model, checked)
    with torch.no_grad():
        want = [model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits for b in batches[:2]]
    assert all(torch.equal(s, w) for s, w in zip(scores, want, strict=True))
    assert all(torch.equal(f, w.flatten()) for f, w in zip(flat, want, strict=True))  # no loss: labels dropped


def test_int8_ptq_of_a_bert_classifier_calibrates_on_dict_batches_as_positional_inputs():
    model, batches = _bert(), _batches(4)
    with torch.no_grad():
        want = torch.cat([model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits for b in batches])
    # the same batches mapped by batch_inputs beforehand (positional tuples) and given as dicts (the next test): both
    # must calibrate alike
    feed = [batch_inputs(model, b, 2) for b in batches]
    q = quantize_(model, LinearQuantConfig(per_channel=True), calib_data=feed)
    fid = quantization_report(q).fidelity
    assert fid is not None and fid.passed and fid.rows == 64 and fid.top1_agreement is not None
    with torch.no_grad():
        got = torch.cat([q(*x).logits for x in feed])
    cos = float(nn.functional.cosine_similarity(got.flatten().double(), want.flatten().double(), 0))
    assert cos > 0.98 and abs(cos - fid.cosine) < 1e-3
    assert sum("int8" in e for _, e in quantization_report(q).quantized) >= 12  # 2 layers x 6 linear + pooler


def test_quantize_takes_the_dict_batches_themselves():
    model, batches = _bert(), _batches(4)
    feed = [batch_inputs(model, b, 2) for b in batches]
    q = quantize_(model, LinearQuantConfig(per_channel=True), calib_data=batches)
    fid = quantization_report(q).fidelity
    assert fid is not None and fid.passed and fid.rows == 64 and fid.top1_agreement is not None
    # calibrated exactly as on the positional tuples: the same ranges, so the same quantized outputs
    ref = quantize_(_bert(), LinearQuantConfig(per_channel=True), calib_data=feed)
    with torch.no_grad():
        assert all(torch.equal(q(*x).logits, ref(*x).logits) for x in feed)
