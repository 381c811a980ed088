"""The data-parallel worker (``deepslim.train._ddp_worker``) run inside this process as a one-rank job.

torchrun starts the worker as a fresh interpreter, so tests that go through it never see the worker's code run in
the test process (and a mutation tool never sees it at all). Here the launcher is replaced by a call of the worker's
``main`` with the environment torchrun would give rank 0 of a world of one; everything else is the real path:
the parent writes the job, the worker trains through DistributedDataParallel (gloo) and writes its files, the parent
collects them. The oracle is one-process ``fit``/``distill`` fed the same global order.
"""

import contextlib
import dataclasses
import json
import math
import shutil
import socket

import pytest
import torch

import deepslim as ds
from deepslim.data import Preprocessing
from deepslim.errors import ConfigError, DataError, DeepSlimError
from deepslim.models import PREPROCESSING_ATTR
from deepslim.tasks import get_task
from deepslim.train import _ddp_worker, distributed
from deepslim.train.distributed import JOB_FILE, RESULT_FILE, sharded_loader, state_digest

DATA = {"batch_size": 64, "test_fraction": 0.19}


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def in_process(monkeypatch, tmp_path):
    """Run every data-parallel job as rank 0 of a world of one in this process; keep a copy of its directory."""
    kept = tmp_path / "kept"
    threads = torch.get_num_threads()

    def launch(workdir, *, nproc, threads, on_epoch):
        assert nproc == 1
        env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": str(threads)}  # fmt: skip
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        (workdir / "launcher.log").write_text("")
        try:
            _ddp_worker.main(str(workdir / JOB_FILE))
        except BaseException:
            shutil.copytree(workdir, kept)
            raise distributed._failure(workdir, 1) from None
        distributed._report_epochs(workdir, 0, on_epoch)
        shutil.copytree(workdir, kept)

    monkeypatch.setattr(distributed, "_launch", launch)
    yield kept
    torch.set_num_threads(threads)


def _reference_data(seed):
    data = ds.load_data("digits", **DATA)
    return dataclasses.replace(data, train=sharded_loader(data.train, num_replicas=1, rank=0, seed=seed,
                                                          batch_size=64))  # fmt: skip


def test_a_one_rank_worker_run_in_process_is_one_process_fit_with_every_option(in_process, tmp_path):
    torch.manual_seed(7)
    model = ds.create_model("lenet5", input_size=8)
    reference = ds.create_model("lenet5", input_size=8)
    reference.load_state_dict(model.state_dict())
    options = {"epochs": 2, "seed": 4, "optimizer": "sgd", "lr": 0.07, "momentum": 0.5, "weight_decay": 1e-3,
               "cosine": False, "restore_best": False}  # fmt: skip
    seen = []
    ckpt = tmp_path / "best.pt"
    result = distributed.fit_ddp(model, "digits", nproc=1, data_options=DATA, on_epoch=seen.append, checkpoint=ckpt,
                                 **options)  # fmt: skip
    ref = ds.fit(reference, _reference_data(4), **options)
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6, rtol=0), name
    assert [set(h) for h in result.history] == [set(h) for h in ref.history]
    for mine, theirs in zip(result.history, ref.history, strict=True):
        for key in theirs:
            assert math.isclose(mine[key], theirs[key], rel_tol=1e-6, abs_tol=1e-9), key
    assert seen == result.history and len(seen) == 2  # history.jsonl, line by line, reached on_epoch
    assert (result.best_epoch, result.best_val_accuracy) == (ref.best_epoch, ref.best_val_accuracy)
    assert result.best_val_metric == ref.best_val_metric and 0 < result.seconds < 600
    # rank 0's files: the digest of the parameters it ended with, the result, the checkpoint of its best epoch
    digest = json.loads((in_process / "digest-rank0.json").read_text())
    assert digest == {"rank": 0, "params": state_digest(model)}
    written = json.loads((in_process / RESULT_FILE).read_text())
    assert set(written) == {"history", "best_epoch", "best_val_accuracy", "seconds", "best_val_metric"}
    assert written["history"] == result.history and written["best_epoch"] == ref.best_epoch
    lines = (in_process / distributed.HISTORY_FILE).read_text().splitlines()
    assert [json.loads(ln) for ln in lines] == result.history
    job = json.loads((in_process / JOB_FILE).read_text())
    assert job["options"] == {"epochs": 2, "lr": 0.07, "optimizer": "sgd", "weight_decay": 1e-3, "momentum": 0.5,
                              "seed": 4, "cosine": False, "restore_best": False}  # fmt: skip
    assert ckpt.is_file() and job["checkpoint"] == str(ckpt)


def test_distillation_with_a_hint_run_by_the_worker_in_process_is_one_process_distill(in_process, tmp_path):
    torch.manual_seed(5)
    teacher = ds.create_model("lenet5", input_size=8)
    student = ds.create_model("lenet5", input_size=8)
    reference = ds.create_model("lenet5", input_size=8)
    reference.load_state_dict(student.state_dict())
    # the student expects other inputs than the data's: the wrapper must carry its preprocessing record
    for m in (student, reference):
        setattr(m, PREPROCESSING_ATTR, Preprocessing(mean=(0.3,), std=(2.0,)).to_dict())
    config = ds.train.KDConfig(temperature=3.0, alpha=0.3, hint_weight=0.5, hints={"features.3": "features.3"})
    options = {"epochs": 1, "seed": 2, "optimizer": "sgd", "lr": 0.05}
    ckpt = tmp_path / "out" / "best.pt"
    result = ds.train.distill_ddp(student, teacher, "digits", config, nproc=1, data_options=DATA, checkpoint=ckpt,
                                  **options)  # fmt: skip
    torch.manual_seed(2)
    ref = ds.distill(reference, teacher, _reference_data(2), config, **options)
    for p, q in zip(student.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6, rtol=0)
    for key in ref.history[0]:
        assert math.isclose(result.history[0][key], ref.history[0][key], rel_tol=1e-6, abs_tol=1e-9), key
    assert state_digest(ds.load_model(ckpt)) == state_digest(student)  # rank 0 wrote the best epoch's checkpoint
    job = json.loads((in_process / JOB_FILE).read_text())
    assert job["kd"] == {"temperature": 3.0, "alpha": 0.3, "hints": [["features.3", "features.3"]],
                         "hint_weight": 0.5}  # fmt: skip


def test_a_rank_that_fails_writes_one_line_with_its_class_and_the_parent_raises_it(in_process):
    model = ds.create_model("lenet5", input_size=8)
    before = state_digest(model)
    with pytest.raises(DataError, match=r"^data-parallel training failed on rank 0: .*image_size") as info:
        distributed.fit_ddp(model, "digits", nproc=1, epochs=1, data_options={"batch_size": 64, "image_size": -3})
    assert "\n" not in str(info.value) and state_digest(model) == before
    record = json.loads((in_process / "error-rank0.json").read_text())
    assert {k: record[k] for k in ("rank", "type", "collective")} == {"rank": 0, "type": "DataError",
                                                                      "collective": False}  # fmt: skip
    assert "image_size" in record["message"] and "\n" not in record["message"]


def test_a_dataset_whose_batch_is_not_the_jobs_global_batch_is_refused_by_the_rank(monkeypatch):
    job = {"data": {"spec": "digits", "options": DATA}, "global_batch": 32, "options": {"seed": 0}}
    with pytest.raises(ConfigError, match=r"^dataset 'digits' gave batch size 64, expected 32$"):
        _ddp_worker._sharded_data(job, 0, 1)
    job["global_batch"] = 64
    data = _ddp_worker._sharded_data(job, 1, 2)  # rank 1 of 2: every second index of the seeded permutation
    ref = sharded_loader(ds.load_data("digits", **DATA).train, num_replicas=2, rank=1, seed=0, batch_size=32)
    assert data.train.batch_size == 32
    assert list(data.train.sampler) == list(ref.sampler)


@pytest.mark.parametrize(("exc", "rank", "type_", "message", "collective"), [
    (ConfigError("first line\nthe reason\n"), 3, "ConfigError", "the reason", False),
    (RuntimeError("boom"), 0, "RuntimeError", "RuntimeError: boom", False),
    (RuntimeError("[Gloo] connection closed by peer"), 1, "RuntimeError",
     "RuntimeError: [Gloo] connection closed by peer", True),
    (ConnectionResetError("reset"), 2, "ConnectionResetError", "ConnectionResetError: reset", True),
    (DeepSlimError(""), 0, "DeepSlimError", "DeepSlimError", False),
])  # fmt: skip
def test_a_ranks_error_record_is_its_last_line_its_class_and_whether_the_collective_failed(
        tmp_path, exc, rank, type_, message, collective):  # fmt: skip
    _ddp_worker._write_error(tmp_path, rank, exc)
    record = json.loads((tmp_path / f"error-rank{rank}.json").read_text())
    assert record["time"] > 1e9
    del record["time"]
    assert record == {"rank": rank, "type": type_, "message": message, "collective": collective}


def test_an_unwritable_directory_loses_the_error_record_but_not_the_error(tmp_path):
    _ddp_worker._write_error(tmp_path / "gone", 0, ValueError("x"))  # no exception of its own
    assert not (tmp_path / "gone").exists()


def test_an_epoch_improves_on_a_strictly_better_score_and_the_first_always_counts():
    log = _ddp_worker._EpochLog(None, get_task("classification"))
    assert log.path is None
    steps = [(math.nan, True), (0.5, True), (0.5, False), (0.4, False), (0.6, True), (math.nan, False)]
    for accuracy, better in steps:
        log.history.append({"val_accuracy": accuracy, "val_loss": 1.0, "train_accuracy": 0.9})
        assert log.improved() is better, accuracy
    assert log.best_score == 0.6


def test_the_averaging_hook_leaves_owned_and_gradient_free_parameters_alone(monkeypatch):
    model = torch.nn.Linear(2, 2)
    extra = torch.nn.Parameter(torch.zeros(2))
    extra.grad = torch.tensor([4.0, 6.0])
    spare = torch.nn.Parameter(torch.zeros(1))  # not owned, no gradient: skipped
    calls = []
    monkeypatch.setattr(_ddp_worker.dist, "all_reduce", lambda t: calls.append(t.clone()) or t.mul_(2))
    monkeypatch.setattr(_ddp_worker.dist, "get_world_size", lambda: 4)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt = torch.optim.SGD([*model.parameters(), extra, spare], lr=0.1)
    _ddp_worker._averaging_hook(model)(opt, (), {})
    assert len(calls) == 1 and torch.equal(calls[0], torch.tensor([4.0, 6.0]))
    assert torch.equal(extra.grad, torch.tensor([2.0, 3.0]))  # summed over 4 "ranks" (x2 here), divided by 4
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in model.parameters())


def test_an_epochs_training_metrics_are_averaged_over_the_ranks_and_rank_zero_appends_them(monkeypatch, tmp_path):
    other_rank = {"train_accuracy": 0.7, "train_loss": 3.0}  # what a second rank reports for its own shard

    def all_reduce(t):  # the sum over two ranks, keys in sorted order
        t.add_(torch.tensor([other_rank[k] for k in sorted(other_rank)], dtype=t.dtype))

    monkeypatch.setattr(_ddp_worker.dist, "all_reduce", all_reduce)
    monkeypatch.setattr(_ddp_worker.dist, "get_world_size", lambda: 2)
    log = _ddp_worker._EpochLog(tmp_path, get_task("classification"))
    mine = {"train_loss": 1.0, "train_accuracy": 0.5, "val_loss": 2.0, "val_accuracy": 0.25, "lr": 0.1}
    log(mine)
    assert log.history == [{"train_loss": 2.0, "train_accuracy": 0.6, "val_loss": 2.0, "val_accuracy": 0.25,
                            "lr": 0.1}]  # fmt: skip
    assert mine["train_loss"] == 1.0  # the caller's dict is not changed
    log({**mine, "val_accuracy": 0.5})
    lines = (tmp_path / distributed.HISTORY_FILE).read_text().splitlines()
    assert [json.loads(ln) for ln in lines] == log.history and len(lines) == 2
    quiet = _ddp_worker._EpochLog(None, get_task("classification"))
    quiet(mine)
    assert len(quiet.history) == 1 and len((tmp_path / distributed.HISTORY_FILE).read_text().splitlines()) == 2


def test_every_buffer_is_broadcast_from_rank_zero_before_validation(monkeypatch):
    sent = []
    monkeypatch.setattr(_ddp_worker.dist, "broadcast", lambda t, src: sent.append((t, src)))
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2), torch.nn.BatchNorm2d(2))
    _ddp_worker._sync_buffers(model)
    assert [id(t) for t, _ in sent] == [id(b) for b in model.buffers()] and len(sent) == 6
    assert {src for _, src in sent} == {0}


def test_the_distillation_checkpoint_is_rewritten_only_after_an_epoch_that_improved(in_process, tmp_path, monkeypatch):
    verdicts = iter([True, False])  # the second epoch does not improve
    monkeypatch.setattr(_ddp_worker._EpochLog, "improved", lambda self: next(verdicts))
    torch.manual_seed(5)
    teacher, student = ds.create_model("lenet5", input_size=8), ds.create_model("lenet5", input_size=8)
    ckpt = tmp_path / "best.pt"
    small = {"batch_size": 64, "test_fraction": 0.19}
    ds.train.distill_ddp(student, teacher, "digits", nproc=1, data_options=small, checkpoint=ckpt, epochs=2, seed=1,
                         optimizer="sgd", lr=0.05, restore_best=False)  # fmt: skip
    saved = ds.load_model(ckpt)
    assert state_digest(saved) != state_digest(student)  # the first epoch's weights, not the last one's
    assert next(verdicts, "spent") == "spent"
