"""benchmarks/heads_probes20.py: a probe's AdamW betas are split off its variant and reach the optimizer the
distillation builds, only while the probe runs."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
pytest.importorskip("transformers", reason="the benchmark imports the Hugging Face adapters")


def test_betas_are_split_off_and_the_rest_is_left_for_the_config():
    import heads_probes20

    assert heads_probes20.split_spec("lr=5e-4,betas=0.9:0.98,warmup=0.02") == ("lr=5e-4,warmup=0.02",
                                                                               {"betas": (0.9, 0.98)})  # fmt: skip
    assert heads_probes20.split_spec("lr=5e-4") == ("lr=5e-4", {})


@pytest.mark.parametrize("value", ["0.9", "0.9:1.0", "a:b", "0.9:0.98:0.9"])
def test_betas_that_are_not_two_numbers_below_one_are_refused(value):
    import heads_probes20
    from deepslim.errors import ConfigError

    with pytest.raises(ConfigError, match="betas is B1:B2"):
        heads_probes20.split_spec(f"lr=5e-4,betas={value}")


def test_the_distillations_adamw_takes_the_betas_inside_and_the_default_after():
    import deepslim.train.student as student_kd
    import heads_probes20
    from deepslim.train.student import EncoderKDConfig

    weight = torch.nn.Parameter(torch.ones(3))
    config = EncoderKDConfig(cpu_seconds=1.0, lr=0.1)
    with heads_probes20.optimizer({"betas": (0.5, 0.9)}):
        inside = student_kd.adamw([weight], config)  # what distill_encoder calls, looked up at call time
    after = student_kd.adamw([weight], config)
    assert inside.param_groups[0]["betas"] == (0.5, 0.9) and inside.param_groups[0]["lr"] == 0.1
    assert after.param_groups[0]["betas"] == (0.9, 0.999)
    oracle, plain = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    reference = torch.optim.AdamW([oracle], lr=0.1, weight_decay=0.01, betas=(0.5, 0.9))
    default = torch.optim.AdamW([plain], lr=0.1, weight_decay=0.01)
    for grad in ([1.0, -2.0, 0.5], [-3.0, 0.5, 0.5]):  # two steps: the second one depends on the betas
        for p, opt in ((weight, inside), (oracle, reference), (plain, default)):
            p.grad = torch.tensor(grad)
            opt.step()
    assert torch.allclose(weight.detach(), oracle.detach(), atol=1e-6)
    assert not torch.allclose(weight.detach(), plain.detach(), atol=1e-3)


def test_distill_runs_heads_prune_distill_with_the_betas_and_records_them(monkeypatch, tmp_path):
    import deepslim.train.student as student_kd
    import heads_probes20
    from deepslim.train.student import EncoderKDConfig

    out, calls = tmp_path / "kd.json", []

    def fake_main(argv):
        opt = student_kd.adamw([torch.nn.Parameter(torch.ones(1))], EncoderKDConfig(cpu_seconds=1.0))
        calls.append((argv, opt.param_groups[0]["betas"]))
        out.write_text('{"student": {"kd_config": {"lr": 0.0005}}}')

    monkeypatch.setattr(heads_probes20.heads_prune, "main", fake_main)
    heads_probes20.main(["distill", "--betas", "0.9:0.98", "--cpu", "600", "--json", str(out)])
    assert calls == [(["distill", "--cpu", "600", "--json", str(out)], (0.9, 0.98))]
    assert heads_probes20.json.loads(out.read_text())["student"]["kd_config"] == {"lr": 0.0005, "betas": [0.9, 0.98]}
    with pytest.raises(SystemExit):
        heads_probes20.main(["distill", "--betas", "0.9", "--json", str(out)])
    assert len(calls) == 1  # a bad --betas stops before the distillation
