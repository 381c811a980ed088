"""Data-parallel training through torchrun (gloo): real worker processes, compared with one process."""

import dataclasses
import logging
import math
import re
import tempfile

import pytest
import torch

import deepslim as ds
from deepslim.errors import ConfigError, DataError
from deepslim.train.distributed import fit_ddp, sharded_loader, state_digest

# 1,276 training digits: even, so the two ranks' shards are equal and the sampler repeats no sample
DATA = {"batch_size": 64, "test_fraction": 0.19}


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """Temporary directories of this process land in tmp_path, so the test sees what is left behind."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_two_ranks_end_identical_and_match_one_process_with_the_same_global_order(private_tmp, caplog):
    torch.manual_seed(3)
    model = ds.create_model("lenet5", input_size=8)
    reference = ds.create_model("lenet5", input_size=8)
    reference.load_state_dict(model.state_dict())
    before = state_digest(model)
    epochs_seen = []
    with caplog.at_level(logging.INFO, logger="deepslim.train.distributed"):
        result = fit_ddp(model, "digits", nproc=2, epochs=2, data_options=DATA, seed=4, on_epoch=epochs_seen.append)

    # each rank reported a digest of its parameters: bit-identical, and the parent now holds rank 0's
    digests = re.findall(r"[0-9a-f]{64}", next(r.message for r in caplog.records if "digests" in r.message))
    assert len(digests) == 2 and digests[0] == digests[1] == state_digest(model) != before
    assert not list(private_tmp.glob("deepslim-ddp-*"))  # the job directory is gone

    # one process, global batch 64, fed the same global order (sharded_loader with one replica)
    data = ds.load_data("digits", **DATA)
    data = dataclasses.replace(data, train=sharded_loader(data.train, num_replicas=1, rank=0, seed=4, batch_size=64))
    ref = ds.fit(reference, data, epochs=2, seed=4)
    # the same updates up to float summation order (measured: 8e-7 after 40 Adam steps)
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5, rtol=0), name
    assert epochs_seen == result.history and len(result.history) == 2
    for mine, theirs in zip(result.history, ref.history, strict=True):
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):  # train_* averaged over ranks
            assert math.isclose(mine[key], theirs[key], rel_tol=1e-5), key
    assert result.best_epoch == ref.best_epoch and result.best_val_accuracy == ref.best_val_accuracy
    assert result.history[-1]["val_accuracy"] > 0.8  # it learned (chance is 0.1)


def test_a_failing_rank_surfaces_as_one_deepslim_error_and_leaves_no_temporary_files(private_tmp):
    model = ds.create_model("lenet5", input_size=8)
    before = state_digest(model)
    # the option is accepted by name but refused by the loader inside the rank
    with pytest.raises(DataError, match=r"failed on rank 0: .*image_size"):
        fit_ddp(model, "digits", nproc=1, epochs=1, data_options={"batch_size": 64, "image_size": -3})
    assert state_digest(model) == before
    assert not list(private_tmp.glob("deepslim-ddp-*"))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"nproc": 0}, "nproc must be a positive"),
    ({"nproc": -2}, "nproc must be a positive"),
    ({"nproc": 3}, "64 does not split evenly over 3 processes"),
    ({"nproc": 2, "data_options": {"batch_size": 0}}, "batch_size must be a positive"),
    ({"nproc": 2, "threads": 0}, "threads must be a whole number from 1 to 1024"),
    ({"nproc": 2, "optimizer": "lbfgs"}, "optimizer must be one of"),
])  # fmt: skip
def test_bad_settings_are_refused_before_any_process_starts(kwargs, message, private_tmp):
    options = {"epochs": 1, "data_options": {"batch_size": 64}, **kwargs}
    with pytest.raises(ConfigError, match=message):
        fit_ddp(ds.create_model("lenet5", input_size=8), "digits", **options)
    assert not list(private_tmp.glob("deepslim-ddp-*"))


def test_a_loaded_bundle_is_refused_with_the_way_to_pass_a_spec():
    with pytest.raises(ConfigError, match="needs the dataset's spec"):
        fit_ddp(ds.create_model("lenet5", input_size=8), ds.load_data("digits"), nproc=2, epochs=1)


def test_distillation_with_hints_on_two_ranks_matches_one_process(private_tmp):
    torch.manual_seed(5)
    teacher = ds.create_model("lenet5", input_size=8)
    student = ds.create_model("lenet5", input_size=8)
    reference = ds.create_model("lenet5", input_size=8)
    reference.load_state_dict(student.state_dict())
    config = ds.train.KDConfig(hints={"features.3": "features.3"})  # a trained regressor, averaged over ranks
    ckpt = private_tmp / "out" / "best.pt"
    # SGD: Adam's normalised step turns float noise in a near-zero gradient into a full step (measured: hints with
    # Adam drift to 8e-4 after 20 steps though the first step's gradients agree to 1e-7)
    options = {"epochs": 1, "seed": 2, "optimizer": "sgd", "lr": 0.05}
    result = ds.train.distill_ddp(student, teacher, "digits", config, nproc=2, data_options=DATA, checkpoint=ckpt,
                                  **options)  # fmt: skip
    data = ds.load_data("digits", **DATA)
    data = dataclasses.replace(data, train=sharded_loader(data.train, num_replicas=1, rank=0, seed=2, batch_size=64))
    torch.manual_seed(2)  # the regressor's initial weights, as on the ranks
    ref = ds.distill(reference, teacher, data, config, **options)
    for p, q in zip(student.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5, rtol=0)
    assert math.isclose(result.history[0]["val_loss"], ref.history[0]["val_loss"], rel_tol=1e-5)
    assert state_digest(ds.load_model(ckpt)) == state_digest(student)  # rank 0 wrote the checkpoint
    assert not list(private_tmp.glob("deepslim-ddp-*"))
