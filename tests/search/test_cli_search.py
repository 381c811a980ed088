"""``deepslim search`` on the command line: names and budgets checked before any data or model is loaded."""

import pytest

from deepslim.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(("option", "message"), [
    (["--strategy", "annealing"], "unknown strategy 'annealing'; choose one of tpe, nsga2, random, grid"),
    (["--budget", "latency=fast"], "cannot read the budget value 'fast'"),
    (["--budget", "power=1W"], "unknown budget 'power'; choose from latency, size"),
    (["--objective", "accuracy,speed"], "unknown objective 'speed'; choose from accuracy, latency, size"),
    (["--runtime", "tvm"], "unknown runtime 'tvm' for latency tables; choose one of onnxruntime"),
    (["--latency-model", "flops"], "unknown latency model 'flops'; choose one of nodes, layers, measured"),
    (["--device", "pi9", "--budget", "energy=0.5x"],
     "unknown device 'pi9'; known devices: cortex-m7, h100, host, jetson-nano, rpi4"),
])  # fmt: skip
def test_bad_names_exit_2_with_the_valid_ones_before_loading_anything(capsys, tmp_path, option, message):
    code, out, err = run(capsys, "search", "no-such-model", "--data", "no-such-data", "--out", str(tmp_path / "s"),
                         *option)  # fmt: skip
    assert code == 2 and out == ""
    assert message in err and "no-such" not in err
    assert not (tmp_path / "s").exists()


def test_zero_workers_is_a_usage_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["search", "lenet5", "--data", "digits", "--out", str(tmp_path / "s"), "--workers", "0"])
    assert exit_.value.code == 2
    assert "--workers: expected a whole number >= 1, got '0'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(("option", "message"), [
    (["--proxy-lr", "-0.1"], "--proxy-lr: expected a number > 0, got '-0.1'"),
    (["--measure-repeats", "0"], "--measure-repeats: expected a whole number >= 1, got '0'"),
])  # fmt: skip
def test_a_non_positive_proxy_lr_or_repeat_count_is_a_usage_error(capsys, tmp_path, option, message):
    with pytest.raises(SystemExit) as exit_:
        main(["search", "lenet5", "--data", "digits", "--out", str(tmp_path / "s"), *option])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_a_wrong_storage_password_fails_at_once_before_loading_anything(capsys, tmp_path, postgres):
    import time

    start = time.perf_counter()
    code, out, err = run(capsys, "search", "no-such-model", "--data", "no-such-data", "--out", str(tmp_path / "s"),
                         "--storage", postgres.url(password="wrong"), "--workers", "2")  # fmt: skip
    assert code == 2 and out == "" and time.perf_counter() - start < 5
    assert "password authentication failed" in err and "wrong" not in err and "no-such" not in err


def test_a_worker_without_a_storage_or_study_exits_2_with_what_to_do(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("DEEPSLIM_STORAGE", raising=False)
    code, _, err = run(capsys, "worker")
    assert code == 2 and "give the study's storage: --storage URL (or set DEEPSLIM_STORAGE)" in err
    pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")
    from deepslim.search.storage import create_study_once

    url = f"journal:{tmp_path / 's.journal'}"
    create_study_once(url, "plain", ["minimize"], metadata={"space_fingerprint": "x"})
    code, _, err = run(capsys, "worker", "--storage", url, "--study", "other")
    assert code == 2 and "no study 'other' in this storage (it has: plain)" in err
    monkeypatch.setenv("DEEPSLIM_STORAGE", url)
    code, _, err = run(capsys, "worker", "--study", "plain")
    assert code == 2 and "study 'plain' was not created by deepslim search with workers" in err


def test_a_negative_calibration_policy_count_is_a_usage_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["search", "lenet5", "--data", "digits", "--out", str(tmp_path / "s"), "--calibration-policies", "-1"])
    assert exit_.value.code == 2
    assert "--calibration-policies: expected a whole number >= 0, got '-1'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_the_calibration_policy_count_reaches_the_search(capsys, tmp_path, monkeypatch):
    import importlib

    from deepslim.errors import ConfigError

    search_pkg = importlib.import_module("deepslim.search")  # the package (deepslim.search is also the function)

    seen = {}

    def fake_search(*args, **kwargs):
        seen.update(kwargs)
        raise ConfigError("stopped by the test")

    monkeypatch.setattr(search_pkg, "search", fake_search)
    code, _, err = run(capsys, "search", "lenet5", "--data", "digits", "--budget", "latency=0.5x", "--trials", "1",
                       "--out", str(tmp_path / "s"), "--calibration-policies", "13")  # fmt: skip
    assert code == 2 and "stopped by the test" in err
    assert seen["calibration_policies"] == 13
