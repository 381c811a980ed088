"""benchmarks/heads_prune.py distill --kd: more EncoderKDConfig fields for the full run, checked before any work."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
pytest.importorskip("transformers", reason="the benchmark imports the Hugging Face adapters")


@pytest.mark.parametrize(("kd", "says"), [("warmup=2", "warmup in"), ("passages=0.1", "passages"),
                                          ("layer_weights=1:nan", "layer_weights")])  # fmt: skip
def test_a_bad_kd_setting_is_refused_in_one_line_before_the_teacher_loads(kd, says, tmp_path, capsys, monkeypatch):
    import heads_prune

    monkeypatch.setattr(heads_prune.ds, "load_model", lambda *_: pytest.fail("loaded the teacher before checking"))
    with pytest.raises(SystemExit) as exit_:
        heads_prune.main(["distill", "--kd", kd, "--json", str(tmp_path / "r.json")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: --kd" in err and says in err


def test_the_kd_fields_override_the_flags_and_are_recorded(monkeypatch, tmp_path):
    import heads_prune

    seen = []
    monkeypatch.setattr(heads_prune, "prune", lambda *_: (torch.nn.Linear(1, 1), {}))
    monkeypatch.setattr(heads_prune, "fidelity", lambda *_: {})
    monkeypatch.setattr(heads_prune, "word_embeddings", lambda model: model.weight)
    monkeypatch.setattr(heads_prune, "distill_encoder", lambda *a: seen.append(a[-1]) or {"steps": 1})
    monkeypatch.setattr(heads_prune, "save", lambda *_: None)
    monkeypatch.setattr(heads_prune.ds, "load_data", lambda *_, **__: None)
    args = heads_prune.argparse.Namespace(policy="heads=1/3", freeze_embeddings=1, cpu=600.0, lr=5e-4, wall=None,
                                          seed=0, precision="bf16", batch_size=64, passages=0.0, out=str(tmp_path),
                                          kd="lr=7e-4,warmup=0.02,layer_weights=1:2")  # fmt: skip
    result: dict = {}
    heads_prune.distill(args, None, (None, [1, 2], [1, 2]), None, None, result)
    (config,) = seen
    assert (config.lr, config.warmup, config.layer_weights) == (7e-4, 0.02, (1.0, 2.0))
    assert (config.batch_size, config.precision, config.cpu_seconds) == (64, "bf16", 600.0)  # the flags' values
    assert result["student"]["kd_config"]["warmup"] == 0.02 and result["student"]["kd_config"]["lr"] == 7e-4
