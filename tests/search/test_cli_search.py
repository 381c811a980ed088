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
    (["--budget", "energy=1uJ"], "unknown budget 'energy'; choose from latency, size"),
    (["--objective", "accuracy,speed"], "unknown objective 'speed'; choose from accuracy, latency, size"),
    (["--runtime", "tvm"], "unknown runtime 'tvm' for latency tables; choose one of onnxruntime"),
])  # fmt: skip
def test_bad_names_exit_2_with_the_valid_ones_before_loading_anything(capsys, tmp_path, option, message):
    code, out, err = run(capsys, "search", "no-such-model", "--data", "no-such-data", "--out", str(tmp_path / "s"),
                         *option)  # fmt: skip
    assert code == 2 and out == ""
    assert message in err and "no-such" not in err
    assert not (tmp_path / "s").exists()
