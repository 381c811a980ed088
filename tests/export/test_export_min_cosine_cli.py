"""``deepslim export --min-cosine C`` sets the parity threshold export_onnx writes the file under (a CLI user whose
dynamic int8 file reaches a cosine just under the 0.995 default can lower it); a value that is not a cosine in
(0, 1] is a usage error, exit status 2."""

import pytest

import deepslim as ds
from deepslim.cli import main


@pytest.mark.parametrize("value", ["0", "-0.5", "1.5", "nan", "high"])
def test_a_min_cosine_outside_zero_to_one_is_refused_with_exit_status_2(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export", "lenet5", "--min-cosine", value, "-o", str(tmp_path / "m.onnx")])
    assert exc.value.code == 2 and "expected a cosine in (0, 1]" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("args", "want"), [(["--min-cosine", "0.99"], 0.99), (["--min-cosine", "1"], 1.0),
                                            ([], None)])  # fmt: skip
def test_the_min_cosine_given_reaches_export_onnx_and_none_leaves_its_default(args, want, tmp_path, monkeypatch):
    seen = {}

    def export_onnx(model, path, **kwargs):
        seen.update(kwargs)
        raise ds.ExportError("stopped by the test")

    monkeypatch.setattr(ds, "export_onnx", export_onnx)
    code = main(["export", "lenet5", *args, "-o", str(tmp_path / "m.onnx")])
    assert code == 2 and seen["min_cosine"] == want
