"""``deepslim fit`` / ``deepslim distill``: one process and data-parallel (``--nproc 2``: one real torchrun launch,
shared by the module), and the usage errors."""

import json
import logging
import re

import pytest
import torch

import deepslim as ds
from deepslim.cli import main
from deepslim.pipeline import load_for_data
from deepslim.train.distributed import state_digest
from tests.pipeline._ddp import reference_data

FIT = ["lenet5", "--data", "digits", "-O", "input_size=8", "--batch-size", "64", "--seed", "4"]


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def ddp_fit(tmp_path_factory):
    """``deepslim fit ... --nproc 2`` once: the written model, its JSON report, and the ranks' logged digests."""
    out = tmp_path_factory.mktemp("ddp") / "fit.pt"
    records, logger = _Records(), logging.getLogger("deepslim.train.distributed")
    logger.addHandler(records)
    # whatever earlier tests in this process did to logging: setLevel (not assigning .level) also clears the logger's
    # cached isEnabledFor answers; a disabled logger or a global logging.disable would swallow the record too
    level, disabled, floor = logger.level, logger.disabled, logging.root.manager.disable
    logger.setLevel(logging.INFO)
    logger.disabled = False
    logging.disable(logging.NOTSET)
    try:
        code = main(["-q", "fit", *FIT, "--epochs", "2", "--nproc", "2", "-o", str(out), "--json"])
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
        logger.disabled = disabled
        logging.disable(floor)
    digests = [re.findall(r"[0-9a-f]{64}", m) for m in records.messages if "digests" in m]
    return code, out, digests


def test_fit_on_two_processes_gives_identical_ranks_that_match_one_process_with_the_same_global_batches(ddp_fit):
    code, out, digests = ddp_fit
    assert code == 0 and out.is_file()
    trained = ds.load_model(str(out))
    # both ranks ended with bit-identical parameters, and the file holds them
    assert len(digests) == 1 and len(digests[0]) == 2 and digests[0][0] == digests[0][1] == state_digest(trained)

    # one process from the same initial weights (the CLI seeds them with --seed), fed the same global batches
    data = ds.load_data("digits", batch_size=64)  # 1,259 training digits: the sampler pads one for two ranks
    torch.manual_seed(4)
    reference = load_for_data("lenet5", data, options={"input_size": 8})
    initial = state_digest(reference)
    ds.fit(reference, reference_data(data, nproc=2, seed=4), epochs=2, seed=4, threads=1)
    assert initial != state_digest(trained)
    gap = max((p - q).abs().max().item() for p, q in zip(trained.parameters(), reference.parameters(), strict=True))
    assert gap < 1e-5, f"largest parameter difference {gap:.2e}"  # float summation order only


def test_fit_and_distill_on_one_process_write_the_trained_model(tmp_path, capsys):
    out = tmp_path / "fit.pt"
    assert main(["-q", "fit", *FIT, "--epochs", "1", "-o", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    data = ds.load_data("digits", batch_size=64)
    assert doc["nproc"] == 1 and len(doc["history"]) == 1
    assert doc["test_accuracy"] == ds.evaluate(ds.load_model(str(out)), data).accuracy > 0.3  # chance: 0.1

    student = tmp_path / "student.pt"
    code = main(["-q", "distill", "lenet5", "--teacher", str(out), "--data", "digits", "-O", "input_size=8",
                 "--epochs", "1", "--alpha", "0.5", "--temperature", "2", "-o", str(student), "--json"])  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["test_accuracy"] == ds.evaluate(ds.load_model(str(student)), data).accuracy


def _status(argv):
    """The exit status of ``deepslim ARGV`` (argparse's usage errors exit through SystemExit)."""
    try:
        return main(["-q", *argv])
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize(("argv", "message"), [
    (["fit", *FIT, "--nproc", "0"], "--nproc: expected a whole number >= 1, got '0'"),
    (["fit", *FIT, "--nproc", "-2"], "--nproc: expected a whole number >= 1, got '-2'"),
    (["fit", *FIT, "--nproc", "two"], "--nproc: expected a whole number >= 1, got 'two'"),
    (["distill", *FIT, "--teacher", "lenet5", "--nproc", "0"], "--nproc: expected a whole number >= 1"),
    (["fit", *FIT, "--nproc", "3"], "64 does not split evenly over 3 processes"),
    (["distill", *FIT, "--teacher", "lenet5", "--alpha", "1.5"], "alpha"),
    (["fit", *FIT, "-o", "model.onnx"], "writes .pt, .pth, .pt2 files"),
])  # fmt: skip
def test_bad_training_settings_are_usage_errors_and_write_nothing(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _status([*argv, "-o", "m.pt"] if "-o" not in argv else argv) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
