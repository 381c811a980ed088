"""Bad input, as a new user meets it, exits with status 2 and one line that says what to do -- never "internal
error" (status 1, kept for deepslim's own bugs). Each case here ended in status 1, or in a misleading line, before
issue 13."""

from __future__ import annotations

import argparse
import errno
import os

import pytest
import torch

from deepslim.cli import main
from deepslim.cli._common import run_command

USER_PY = """import torch


def bad(**options):
    raise RuntimeError("boom")


def ok(width=4):
    return torch.nn.Linear(4, width)
"""


@pytest.fixture
def here(tmp_path, monkeypatch):
    """A working directory with the files a careless user points deepslim at."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a folder\n")
    for name in ("adir", "adir.onnx", "adir.pt", "ro"):
        (tmp_path / name).mkdir()
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "garbage.onnx").write_bytes(b"\x08\x01garbage that is not protobuf\xff\xff")
    (tmp_path / "user.py").write_text(USER_PY)
    torch.save(torch.nn.Linear(4, 4).state_dict(), tmp_path / "sd.pt")
    return tmp_path


def write_recipes(here):
    (here / "seed.yaml").write_text("model: lenet5\ndata: digits\nseed: -1\nstages:\n  - train: {epochs: 1}\n")
    (here / "dup.yaml").write_text("model: lenet5\ndata: digits\nstages:\n  - train: {epochs: 1}\nstages: []\n")


def run(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_exit_2(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    assert message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err and "internal error" not in err, err


@pytest.mark.parametrize("argv,message", [
    # outputs the file system refuses, told before any work is done
    (["export", "lenet5", "-o", "afile/m.onnx"], "afile is a file, not a directory"),
    (["export", "lenet5", "-o", "adir.onnx"], "adir.onnx is a directory: name a file"),
    (["pack", "lenet5", "-o", "afile/m.dsz"], "afile is a file, not a directory"),
    (["prune", "lenet5", "--no-latency", "-o", "afile/p.pt"], "afile is a file, not a directory"),
    (["compress", "--recipe", "deep-compression-lenet5", "--out", "afile/run"], "afile is a file, not a directory"),
    # a user's factory that raises is the user's to fix
    (["profile", "user.py:bad"], "user.py:bad() raised RuntimeError: boom"),
    (["profile", "sd.pt", "--arch", "user.py:bad"], "user.py:bad() raised RuntimeError: boom"),
    # numbers out of range
    (["demo", "--seed", "-1", "--out", "run"], "argument --seed: expected a whole number >= 0, got '-1'"),
    (["demo", "--epochs", "-1", "--out", "run"], "argument --epochs: expected a whole number >= 0, got '-1'"),
    (["demo", "--seed", "abc", "--out", "run"], "argument --seed: expected a whole number >= 0, got 'abc'"),
    (["bench", "lenet5", "--threads", "-1"], "argument --threads: expected a whole number of threads from 1"),
    (["bench", "lenet5", "--threads", "0"], "argument --threads: expected a whole number of threads from 1"),
    (["bench", "lenet5", "--threads", "1000000"], "from 1 to 1024, got '1000000'"),
    (["--threads", "-1", "profile", "lenet5"], "argument --threads: expected a whole number of threads from 1"),
    (["--threads", "two", "profile", "lenet5"], "argument --threads: expected a whole number of threads"),
    (["bench", "lenet5", "--seconds", "-1"], "argument --seconds: expected a number > 0, got '-1'"),
    (["bench", "lenet5", "--seconds", "nan"], "argument --seconds: expected a number > 0, got 'nan'"),
    (["compress", "--recipe", "deep-compression-lenet5", "--out", "run", "--seed", "-1"],
     "seed must be a non-negative integer, got -1"),
    (["compress", "--recipe", "seed.yaml", "--out", "run"], "seed must be a non-negative integer, got -1"),
    (["compress", "--recipe", "dup.yaml", "--out", "run"], "duplicate key 'stages'"),
    # files that are not what their name says, and directories where a file belongs
    (["bench", "empty.onnx"], "empty.onnx holds no ONNX graph"),
    (["bench", "garbage.onnx", "--input-shape", "1,4"], "garbage.onnx is not a readable ONNX model"),
    (["bench", "adir.onnx"], "'adir.onnx' is a directory, not an ONNX file"),
    (["profile", "adir.pt"], "'adir.pt' is a directory, not a model"),
    (["profile", "lenet5", "--weights", "adir"], "weights file 'adir' is a directory, not a file"),
])  # fmt: skip
def test_bad_input_exits_2_with_one_line_that_says_what_to_do(capsys, here, argv, message):
    write_recipes(here)
    one_line_exit_2(capsys, argv, message)
    assert not (here / "run").exists() and not (here / "afile").is_dir()


def test_a_read_only_output_folder_is_refused_before_the_work(capsys, here, monkeypatch):
    (here / "ro").chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: let the folder refuse this user as it would anyone else
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(here / "ro") else real(p, mode))
    one_line_exit_2(capsys, ["pack", "lenet5", "-o", "ro/m.dsz"], "permission denied in")
    assert list((here / "ro").iterdir()) == []


@pytest.mark.parametrize("exc,status", [
    (PermissionError(errno.EACCES, "Permission denied", "/srv/out/m.onnx"), 2),
    (OSError(errno.ENOSPC, "No space left on device", "/srv/out/m.onnx"), 2),
    (OSError(errno.EROFS, "Read-only file system", "/srv/out/m.onnx"), 2),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/pkg/data.json"), 1),  # may be a bug of ours
    (KeyError("layer"), 1),
])  # fmt: skip
def test_what_the_file_system_refuses_is_the_users_to_fix_and_anything_else_stays_an_internal_error(capsys, exc,
                                                                                                       status):
    def command(_args):
        raise exc

    code = run_command(command, argparse.Namespace(debug=False, global_threads=None))
    err = capsys.readouterr().err
    assert code == status
    assert ("/srv/out/m.onnx" in err and "internal error" not in err) if status == 2 else "internal error" in err


# Cases fixed in the prune command, the ONNX profiler and the model registry.
@pytest.mark.parametrize("argv,message", [
    pytest.param(["prune", "lenet5", "--finetune-epochs", "2", "--no-latency"], "--data"),
    pytest.param(["profile", "empty.onnx"], "empty.onnx"),
    pytest.param(["profile", "lenet5", "-O", "num_classes=-1"], "num_classes"),
    pytest.param(["profile", "lenet5", "-O", "num_classes=abc"], "num_classes must be"),
])  # fmt: skip
def test_bad_input_in_prune_profile_and_model_options_exits_2_with_one_line(capsys, here, argv, message):
    one_line_exit_2(capsys, argv, message)
