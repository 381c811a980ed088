"""benchmarks/transformer_encoder.py carries session 18's measured distillation recipes into ``make bench`` (which runs
it with its defaults): the 3-layer student's passes in bf16 by default, the head-pruned student's in bf16 in batches of
64 (``HEADS_KD``), recorded with the run."""

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
pytest.importorskip("transformers", reason="the benchmark imports the Hugging Face adapters")


class _Ran(Exception):
    """Raised by the stand-in for ``run``: the parsed arguments are all the test needs."""


def test_make_bench_runs_the_student_in_bf16_by_default(monkeypatch, tmp_path):
    import transformer_encoder as te

    seen: list[argparse.Namespace] = []

    def fake_run(args):
        seen.append(args)
        raise _Ran

    monkeypatch.setattr(te, "run", fake_run)
    monkeypatch.setattr(sys, "argv", ["transformer_encoder.py", "--json", str(tmp_path / "r.json")])
    with pytest.raises(_Ran):
        te.main()
    assert seen[0].student_precision == "bf16" and seen[0].student_passages == 0.0
    assert seen[0].heads_cpu == 600 and seen[0].heads_lr == 5e-4  # the issue's budget, session 12's peak lr


def test_the_head_pruned_student_distils_in_bf16_batches_of_64_and_records_it(monkeypatch, tmp_path):
    import transformer_encoder as te

    configs, saved = [], []
    plan = SimpleNamespace(heads=lambda: [8] * 6, blocks=[])
    monkeypatch.setattr(te, "student_copy", lambda teacher: teacher)
    monkeypatch.setattr(te, "prune_heads_", lambda student, config, calib_data: plan)
    monkeypatch.setattr(te, "sentence_fidelity", lambda *a: {"cosine_mean": 0.5})
    monkeypatch.setattr(te, "distill_encoder", lambda s, t, ids, mask, config: configs.append(config) or {"steps": 1})
    monkeypatch.setattr(te, "_save", lambda student, info, prefix: saved.append(prefix))
    word = SimpleNamespace(weight=torch.nn.Parameter(torch.zeros(2)))
    student = SimpleNamespace(encoder=SimpleNamespace(embeddings=SimpleNamespace(word_embeddings=word)),
                              eval=lambda: "evaluated")  # fmt: skip
    args = argparse.Namespace(heads_cpu=600.0, heads_lr=5e-4, wall=None, seed=0, json=str(tmp_path / "r.json"))
    texts = ([], torch.ones(512, 8, dtype=torch.long), torch.ones(512, 8, dtype=torch.long))  # 512 calibration texts
    out, info = te.head_pruned(student, None, args, texts)
    assert out == "evaluated" and len(configs) == 1
    assert (configs[0].precision, configs[0].batch_size, configs[0].cpu_seconds) == ("bf16", 64, 600.0)
    assert info["kd_config"]["precision"] == "bf16" and info["kd_config"]["batch_size"] == 64
    assert not word.weight.requires_grad and saved == [tmp_path / "r.heads"]
