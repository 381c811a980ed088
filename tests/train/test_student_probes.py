"""benchmarks/student_probes.py: a probe without ``--init`` starts a fresh 3-layer student (teacher layers 0, 3 and 5)
on the stream's first batches with an empty chain; one with ``--init`` continues the saved student on the batches its
chain has not drawn; the precision probes pass their arithmetic to the distillation; an unknown probe is a usage
error (exit status 2) before anything loads."""

import argparse
import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
pytest.importorskip("transformers", reason="Hugging Face encoders need the transformers package")

from tests.train._bert import bert_teacher, random_texts  # noqa: E402


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return bert_teacher(tmp_path_factory.mktemp("bert"), 6)  # the student keeps layers 0, 3 and 5


def test_a_fresh_probe_starts_the_chain_and_a_continued_one_skips_it(teacher, tmp_path):
    import student_probes as sp
    import transformer_encoder as te

    texts = ([], *random_texts(48, 10, 3))
    args = argparse.Namespace(steps=3, lr=1e-3, seed=0)
    student, info = sp.probe("bf16", teacher, None, texts, args)
    assert info["init"] is None and info["chain_before"] == sp.FRESH
    assert info["config"]["precision"] == "bf16" and info["kd"]["skip_batches"] == 0
    assert info["chain"]["stream_batches"] == 3 and info["chain"]["runs"] == 1
    assert all(p.dtype == torch.float32 for p in student.parameters())
    start = sp.drop_layers_(copy.deepcopy(teacher), sp.STUDENT_KEEP).state_dict()
    fresh, _ = sp.probe("fp32", teacher, None, texts, argparse.Namespace(steps=1, lr=1e-12, seed=0))
    assert all(torch.allclose(fresh.state_dict()[k], v, atol=1e-6) for k, v in start.items())  # the teacher's layers
    assert not all(torch.allclose(student.state_dict()[k], v, atol=1e-6) for k, v in start.items())  # 3 steps moved

    prefix = tmp_path / "p.student3"
    te._save(student, info, prefix)
    _, more = sp.probe("fp32", teacher, prefix, texts, args)
    assert more["config"]["precision"] == "fp32" and more["init"] == str(prefix)
    assert more["kd"]["skip_batches"] == 3 and more["chain"]["stream_batches"] == 6 and more["chain"]["runs"] == 2
    by = more["chain"]["cpu_s_by_precision"]  # each run under its own precision: the bf16 one, then the fp32 one
    assert by.keys() == {"bf16", "fp32"}
    assert by["bf16"] == pytest.approx(info["kd"]["cpu_s"], abs=0.15)
    assert by["fp32"] == pytest.approx(more["kd"]["cpu_s"], abs=0.15)
    assert sum(more["chain"]["cpu_s_by_precision"].values()) == pytest.approx(more["chain"]["cpu_s"], abs=0.15)


def test_a_passage_probe_adds_packed_rows_and_a_cpu_budget_replaces_the_steps(teacher, monkeypatch):
    """``p10``: bf16 with packed passages a tenth of the text the distillation gets (recorded, and in the chain);
    ``--cpu`` gives each probe a CPU-second budget and no step bound."""
    import student_probes as sp

    seen, real = [], sp.distill_encoder

    def spy(student, teacher, ids, mask, config):
        seen.append((len(ids), config))
        return real(student, teacher, ids, mask, config)

    monkeypatch.setattr(sp, "distill_encoder", spy)
    texts = ([], *random_texts(48, 10, 3))
    _, info = sp.probe("p10", teacher, None, texts, argparse.Namespace(steps=2, lr=1e-3, seed=0, cpu=None))
    assert seen[0][0] == 53 and info["passage_rows"] == 5 and info["passages"] == 0.1  # 5 of 53: a tenth
    assert info["config"]["precision"] == "bf16" and info["kd"]["steps"] == 2
    assert info["chain"]["passages_by_run"] == [0.1] and info["chain"]["stream"]["passages"] == 0.1
    _, timed = sp.probe("bf16", teacher, None, texts, argparse.Namespace(steps=2, lr=1e-3, seed=0, cpu=0.2))
    assert seen[1][0] == 48 and seen[1][1].cpu_seconds == 0.2 and seen[1][1].steps is None
    assert timed["passage_rows"] == 0 and timed["chain"]["passages_by_run"] == [0.0]


def test_an_unknown_probe_is_a_usage_error(monkeypatch, capsys):
    import student_probes as sp

    monkeypatch.setattr(sp.ds, "load_model", lambda *a, **k: pytest.fail("the teacher was loaded"))
    with pytest.raises(SystemExit) as exit_:
        sp.main(["--probes", "fp32,fp16", "--json", "/nonexistent/x.json"])
    assert exit_.value.code == 2 and "unknown probe(s) fp16: choose from control" in capsys.readouterr().err


def test_each_probe_is_written_before_the_next_runs(monkeypatch, tmp_path):
    """A probe that fails (session 19's p25 asked for more passages than the text packs into) keeps the JSON of
    those before it."""
    import json

    import student_probes as sp

    class Model:
        def eval(self):
            return self

    def fake_probe(name, teacher, init, texts, args):
        if name == "p10":
            raise SystemExit("111914 texts make 14445 passages of 128 tokens, not 37305: lower the share")
        return Model(), {"kd": {"steps": 1}}

    monkeypatch.setattr(sp.ds, "load_model", lambda *a, **k: Model())
    monkeypatch.setattr(sp.ds, "load_data", lambda *a, **k: None)
    monkeypatch.setattr(sp, "distill_texts", lambda *a, **k: (None, None, {"corpus": "broad"}))
    monkeypatch.setattr(sp, "probe", fake_probe)
    monkeypatch.setattr(sp, "sentence_fidelity", lambda *a: {"cosine_mean": 0.95})
    monkeypatch.setattr(sp, "heldout_fidelity", lambda *a: {"cosine_mean": 0.94})
    monkeypatch.setattr(sp, "_save", lambda *a: None)
    out = tmp_path / "probes.json"
    with pytest.raises(SystemExit, match="lower the share"):
        sp.main(["--probes", "bf16,p10", "--json", str(out)])
    written = json.loads(out.read_text())
    assert list(written["probes"]) == ["bf16"]
    assert written["probes"]["bf16"]["test_fidelity_torch_seq32"]["cosine_mean"] == 0.95
