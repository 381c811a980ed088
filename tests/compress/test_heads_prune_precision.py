"""benchmarks/heads_prune.py's distillation precision: ``--precision`` reaches every distillation's EncoderKDConfig
(and so the JSON that records it), a kdprobe variant's ``precision=`` overrides it, and it is parsed as a word;
``--batch-size`` reaches kdprobe and steptime the same way; steptime times each run itself; a mode that reads a saved
model refuses to start without ``--from``."""

import argparse
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
pytest.importorskip("transformers", reason="the benchmark imports the Hugging Face adapters")


def test_variant_precision_is_a_word_beside_numbers_and_tuples():
    import heads_prune

    assert heads_prune.kd_spec("lr=5e-4,precision=bf16,steps=219,layer_weights=1:2") == {
        "lr": 5e-4, "precision": "bf16", "steps": 219, "layer_weights": (1.0, 2.0)}  # fmt: skip
    assert heads_prune.kd_spec("fused=false,dropout=True") == {"fused": False, "dropout": True}
    from deepslim.errors import ConfigError

    with pytest.raises(ConfigError, match="fused must be true or false, got '0'"):
        heads_prune.kd_spec("fused=0")


@pytest.mark.parametrize(("flag", "spec", "expected"), [("fp32", "lr=5e-4", "fp32"), ("bf16", "lr=5e-4", "bf16"),
                                                        ("fp32", "precision=bf16", "bf16"),
                                                        ("bf16", "precision=fp32", "fp32")])  # fmt: skip
def test_kdprobe_runs_and_records_the_flag_unless_the_variant_names_one(monkeypatch, flag, spec, expected):
    import heads_prune

    seen = []

    def fake_distill(student, teacher, ids, mask, config):
        seen.append(config)
        return {"steps": 1, "cpu_s": 0.0}

    monkeypatch.setattr(heads_prune, "distill_encoder", fake_distill)
    monkeypatch.setattr(heads_prune, "word_embeddings", lambda m: m.weight)
    args = argparse.Namespace(cpu=120.0, lr=1e-3, seed=0, freeze_embeddings=1, precision=flag, batch_size=64)
    texts = (["doc"], torch.ones(4, 3, dtype=torch.long), torch.ones(4, 3, dtype=torch.long))
    _, info = heads_prune.probe_one(args, torch.nn.Linear(2, 2), None, texts, spec)
    _, other = heads_prune.probe_one(args, torch.nn.Linear(2, 2), None, texts, spec + ",batch_size=16")
    assert [c.precision for c in seen] == [expected, expected]
    assert info["kd_config"]["precision"] == expected
    assert [c.batch_size for c in seen] == [64, 16] and other["kd_config"]["batch_size"] == 16  # the flag, the variant


def test_an_unknown_precision_is_refused_in_one_line(monkeypatch):
    import heads_prune
    from deepslim.errors import ConfigError

    monkeypatch.setattr(heads_prune, "word_embeddings", lambda m: m.weight)
    args = argparse.Namespace(cpu=120.0, lr=1e-3, seed=0, freeze_embeddings=1, precision="fp32", batch_size=32)
    texts = (["doc"], torch.ones(4, 3, dtype=torch.long), torch.ones(4, 3, dtype=torch.long))
    with pytest.raises(ConfigError, match="precision must be one of fp32, bf16, got 'fp16'"):
        heads_prune.probe_one(args, torch.nn.Linear(2, 2), None, texts, "precision=fp16")


def test_steptime_runs_every_setting_each_round_in_alternating_order_and_drops_the_warm_up(monkeypatch):
    """Each run is timed by steptime's own process-time reading, not from the run's ``cpu_s`` (rounded to 0.1 s:
    here 2.6 s for 5 steps of 0.5123 s)."""
    import heads_prune

    calls, clock = [], [100.0]

    def fake_distill(student, teacher, ids, mask, config):
        calls.append((config.precision, config.batch_size, config.steps, config.cpu_seconds))
        cost = {("fp32", 32): 0.5123, ("bf16", 32): 0.4037, ("bf16", 64): 0.5}[(config.precision, config.batch_size)]
        clock[0] += cost * config.steps * (3 if len(calls) <= 3 else 1)  # the warm-up round is slow
        return {"steps": config.steps, "cpu_s": round(cost * config.steps, 1)}

    monkeypatch.setattr(heads_prune.time, "process_time", lambda: clock[0])
    monkeypatch.setattr(heads_prune, "distill_encoder", fake_distill)
    monkeypatch.setattr(heads_prune, "word_embeddings", lambda m: m.weight)
    monkeypatch.setattr(heads_prune, "load", lambda teacher, prefix: (torch.nn.Linear(2, 2), {}))
    args = argparse.Namespace(from_=["/x"], variants="precision=fp32;precision=bf16;precision=bf16,batch_size=64",
                              rounds=2, steps_each=5, lr=1e-3, seed=0, precision="fp32", freeze_embeddings=1,
                              batch_size=32)  # fmt: skip
    texts = (["doc"], torch.ones(4, 3, dtype=torch.long), torch.ones(4, 3, dtype=torch.long))
    out = heads_prune.steptime(args, None, texts)
    order = [(p, b) for p, b, _, _ in calls]
    assert order[3:6] == [("bf16", 64), ("bf16", 32), ("fp32", 32)] and order[6:] == order[:3]
    assert all(steps == 5 and cpu is None for _, _, steps, cpu in calls)
    assert out["precision=fp32"]["cpu_s_per_step"] == 0.5123 and out["precision=bf16"]["cpu_s_per_step"] == 0.4037
    assert out["precision=bf16,batch_size=64"]["cpu_ms_per_text"] == pytest.approx(7.812, abs=1e-3)
    args.variants, args.batch_size = "precision=bf16", 64  # --batch-size is the settings' default
    again = heads_prune.steptime(args, None, texts)
    assert again["precision=bf16"]["cpu_ms_per_text"] == pytest.approx(7.812, abs=1e-3)
    assert [b for _, b, _, _ in calls[9:]] == [64] * 3


@pytest.mark.parametrize("mode", ["steptime", "measure"])
def test_a_mode_that_reads_a_saved_model_refuses_to_start_without_from(monkeypatch, capsys, mode):
    import heads_prune

    monkeypatch.setattr(heads_prune.ds, "load_model", lambda *a, **k: pytest.fail("the teacher was loaded"))
    with pytest.raises(SystemExit) as exit_:
        heads_prune.main([mode, "--json", "/nonexistent/x.json"])
    assert exit_.value.code == 2 and f"{mode} needs --from PREFIX" in capsys.readouterr().err


@pytest.mark.parametrize("variants", ["lr=5e-4;fused=maybe", "precision=fp16", "lr=abc", "bogus=1"])
def test_a_bad_variant_is_refused_in_one_line_before_any_work(monkeypatch, capsys, variants):
    """Every ``--variants`` entry is parsed and checked before the teacher is loaded: exit 2 with the entry named."""
    import heads_prune

    monkeypatch.setattr(heads_prune.ds, "load_model", lambda *a, **k: pytest.fail("work started before the check"))
    with pytest.raises(SystemExit) as exit_:
        heads_prune.main(["kdprobe", "--json", "/dev/null", "--variants", variants])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--variants" in err and variants.split(";")[-1] in err, err
