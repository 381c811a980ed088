"""benchmarks/transformer_encoder.py's 3-layer student chain: a continued run (``--student-init``) skips the batches
its chain drew only when it draws from the same stream (text, seed, batch size); a saved student of another stream,
or one that records none, is refused before its weights are loaded; the chain's CPU seconds are kept per precision
as well, summed over a chain that mixes them."""

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
pytest.importorskip("transformers", reason="Hugging Face encoders need the transformers package")

from tests.train._bert import bert_teacher, random_texts  # noqa: E402


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return bert_teacher(tmp_path_factory.mktemp("bert"), 6)  # student3 keeps layers 0, 3 and 5


def _args(out: Path, init: Path | None = None, seed: int = 0, precision: str = "fp32",
          passages: float = 0.0) -> argparse.Namespace:  # fmt: skip
    return argparse.Namespace(json=str(out / "run.json"), corpus="broad", seed=seed, student_init=init,
                              student_cpu=0.3, student_lr=1e-3, wall=None, student_relation=0.0, student_hidden=1.0,
                              student_layer_weights=None, student_precision=precision,
                              student_passages=passages)  # fmt: skip


def test_a_continued_student_skips_its_chain_only_on_the_same_batch_stream(teacher, tmp_path):
    import transformer_encoder as te

    texts = ([], *random_texts(48, 10, 3))
    (tmp_path / "a").mkdir()
    _, first = te.student3(teacher, _args(tmp_path / "a"), texts, None)
    assert first["chain"]["stream"] == {"corpus": "broad", "seed": 0, "texts": 48, "batch_size": 32}
    prefix = tmp_path / "a" / "run.student3"
    (tmp_path / "b").mkdir()
    _, second = te.student3(teacher, _args(tmp_path / "b", prefix), texts, None)
    assert second["kd"]["skip_batches"] == first["kd"]["steps"] == second["chain_before"]["stream_batches"]
    assert second["chain"]["stream_batches"] == first["kd"]["steps"] + second["kd"]["steps"]
    assert second["chain"]["runs"] == 2

    with pytest.raises(SystemExit, match=r"drew its batches from another stream \(.*'seed': 0.*this run from .*"
                                         r"'seed': 1"):  # fmt: skip
        te.student3(teacher, _args(tmp_path / "b", prefix, seed=1), texts, None)
    fewer = ([], texts[1][:40], texts[2][:40])
    with pytest.raises(SystemExit, match=r"another stream .*'texts': 48.*'texts': 40"):
        te.student3(teacher, _args(tmp_path / "b", prefix), fewer, None)

    old = json.loads(te.prefixed(prefix, ".json").read_text())
    del old["chain"]["stream"]  # saved before the chain recorded its stream
    te.prefixed(prefix, ".json").write_text(json.dumps(old))
    with pytest.raises(SystemExit, match=r"records no batch stream"):
        te.student3(teacher, _args(tmp_path / "b", prefix), texts, None)
    assert json.loads((tmp_path / "b" / "run.student3.json").read_text())["chain"]["runs"] == 2  # nothing over it


def test_the_student_precision_reaches_the_distillation_and_its_record(teacher, tmp_path, monkeypatch):
    """``--student-precision bf16`` runs the distillation's passes in bfloat16 (the config distill_encoder gets) and
    is recorded with the student (the run's JSON and the saved PREFIX.json)."""
    import transformer_encoder as te

    seen, real = [], te.distill_encoder

    def spy(student, teacher, ids, mask, config):
        seen.append(config)
        return real(student, teacher, ids, mask, config)

    monkeypatch.setattr(te, "distill_encoder", spy)
    texts = ([], *random_texts(48, 10, 3))
    for precision in ("bf16", "fp32"):
        (tmp_path / precision).mkdir()
        student, info = te.student3(teacher, _args(tmp_path / precision, precision=precision), texts, None)
        assert info["precision"] == precision and info["kd"]["steps"] >= 1
        saved = json.loads((tmp_path / precision / "run.student3.json").read_text())
        assert saved["precision"] == precision
        assert all(p.dtype == torch.float32 for p in student.parameters())  # weights stay float32
    assert [c.precision for c in seen] == ["bf16", "fp32"]


def test_a_chain_that_mixes_precisions_keeps_their_cpu_seconds_apart(teacher, tmp_path):
    """fp32, then bf16, then fp32 again on the same chain: ``cpu_s`` is the sum of the three runs and
    ``cpu_s_by_precision`` splits it by the arithmetic each run used (read back from each saved student)."""
    import transformer_encoder as te

    texts, runs, prefix = ([], *random_texts(48, 10, 3)), [], None
    for i, precision in enumerate(("fp32", "bf16", "fp32")):
        (tmp_path / str(i)).mkdir()
        _, info = te.student3(teacher, _args(tmp_path / str(i), prefix, precision=precision), texts, None)
        runs.append(info["kd"]["cpu_s"])
        prefix = tmp_path / str(i) / "run.student3"
    saved = json.loads(te.prefixed(prefix, ".json").read_text())["chain"]
    assert saved["runs"] == 3 and saved["cpu_s"] == pytest.approx(sum(runs), abs=0.15)
    assert saved["cpu_s_by_precision"] == {"fp32": pytest.approx(runs[0] + runs[2], abs=0.15),
                                           "bf16": pytest.approx(runs[1], abs=0.05)}  # fmt: skip
    assert runs[1] > 0 and runs[0] + runs[2] > 0


def test_a_chain_saved_before_the_precision_split_counts_as_float32():
    """Records of sessions before 18 have no ``cpu_s_by_precision`` and no precision: all float32. A probe's
    precision is read from its config, tome_seq128's from its kd_config."""
    import transformer_encoder as te

    old = {"kd": {"steps": 5, "cpu_s": 2.0}, "chain_before": {"stream_batches": 10, "cpu_s": 7.5, "runs": 1}}
    assert te.chain(old) == {"stream_batches": 15, "cpu_s": 9.5, "cpu_s_by_precision": {"fp32": 9.5}, "runs": 2,
                             "passages_by_run": [0.0, 0.0]}  # fmt: skip
    probe = {"kd": {"steps": 3, "cpu_s": 1.0}, "config": {"precision": "bf16"},
             "chain_before": te.chain(old)}  # fmt: skip
    assert te.chain(probe)["cpu_s_by_precision"] == {"fp32": 9.5, "bf16": 1.0}
    assert te.run_precision({"kd_config": {"precision": "bf16"}}) == "bf16" and te.run_precision({}) == "fp32"
    assert te.chain({"kd": {"steps": 1, "cpu_s": 0.5}})["cpu_s_by_precision"] == {"fp32": 0.5}  # a first run


def test_packed_passages_reach_the_distillation_and_a_changed_share_continues_the_chain(teacher, tmp_path, monkeypatch):
    """``--student-passages 0.25`` adds packed rows (a quarter of the text the distillation gets, full 10-token rows
    after the texts), recorded in the run, its stream and the chain's ``passages_by_run``; a continuation without
    passages continues that chain (skipping the batches it drew) and records its own share."""
    import transformer_encoder as te

    seen, real = [], te.distill_encoder

    def spy(student, teacher, ids, mask, config):
        seen.append((ids, mask, config))
        return real(student, teacher, ids, mask, config)

    monkeypatch.setattr(te, "distill_encoder", spy)
    texts = ([], *random_texts(48, 10, 3))
    (tmp_path / "a").mkdir()
    _, first = te.student3(teacher, _args(tmp_path / "a", passages=0.25), texts, None)
    ids, mask, _ = seen[0]
    assert first["passages"] == 0.25 and first["passage_rows"] == 16 and len(ids) == 64  # 16 of 64: a quarter
    assert torch.equal(ids[:48], texts[1]) and torch.equal(mask[:48], texts[2]) and bool(mask[48:].all())
    assert first["chain"]["stream"] == {"corpus": "broad", "seed": 0, "texts": 48, "batch_size": 32, "passages": 0.25}
    assert first["chain"]["passages_by_run"] == [0.25]
    assert first["kd_config"]["precision"] == "fp32" and first["kd_config"]["skip_batches"] == 0
    (tmp_path / "b").mkdir()
    _, second = te.student3(teacher, _args(tmp_path / "b", tmp_path / "a" / "run.student3"), texts, None)
    assert len(seen[1][0]) == 48 and second["passage_rows"] == 0
    assert second["kd"]["skip_batches"] == first["kd"]["steps"]
    assert second["chain"]["passages_by_run"] == [0.25, 0.0] and "passages" not in second["chain"]["stream"]


def test_a_passage_share_outside_zero_to_one_is_a_usage_error(monkeypatch, capsys):
    import transformer_encoder as te

    texts = ([], torch.ones(2, 3), torch.ones(2, 3))
    assert te.passage_share("0.1") == 0.1 and te.plus_passages(texts, 0.0) is texts  # share 0: the text as it is
    monkeypatch.setattr(te.ds, "load_model", lambda *a, **k: pytest.fail("the teacher was loaded"))
    monkeypatch.setattr(sys, "argv", ["transformer_encoder.py", "--student-passages", "1", "--json", "/nonexistent"])
    with pytest.raises(SystemExit) as exit_:
        te.main()
    assert exit_.value.code == 2 and "the passage share must be in [0, 1), got 1" in capsys.readouterr().err


def test_a_continuation_starts_from_the_saved_chain_not_a_recomputed_one(tmp_path):
    """Session 18's bf16 chains had their precision split written by hand into ``chain`` (their ``chain_before``
    has none, which chain() would count as float32): a continuation takes the saved chain as it is."""
    import transformer_encoder as te

    stream = {"corpus": "broad", "seed": 0, "texts": 48, "batch_size": 32}
    saved = {"kd": {"steps": 5, "cpu_s": 2.0}, "precision": "bf16",
             "chain_before": {"stream_batches": 10, "cpu_s": 7.5, "runs": 1},
             "chain": {"stream_batches": 15, "cpu_s": 9.5, "runs": 2, "stream": stream,
                       "cpu_s_by_precision": {"bf16": 9.5}}}  # fmt: skip
    te.prefixed(tmp_path / "s.student3", ".json").write_text(json.dumps(saved))
    before = te.continued_chain(tmp_path / "s.student3", stream | {"passages": 0.1})
    assert before == {"stream_batches": 15, "cpu_s": 9.5, "runs": 2, "cpu_s_by_precision": {"bf16": 9.5}}
    nxt = te.chain({"kd": {"steps": 3, "cpu_s": 1.0}, "precision": "bf16", "passages": 0.1, "chain_before": before})
    assert nxt["cpu_s_by_precision"] == {"bf16": 10.5} and nxt["passages_by_run"] == [0.0, 0.0, 0.1]
