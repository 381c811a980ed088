"""A CLI process stopped mid-run (SIGTERM, Ctrl-C) leaves no temporary file or directory behind, exits non-zero, and
leaves an earlier run or file as it was."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import deepslim as ds

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _default_sigint():
    """Ctrl-C as a terminal delivers it, even where the suite itself runs with SIGINT ignored (a background job or
    nohup: the child would inherit the ignore, and Python then installs no KeyboardInterrupt handler)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def leftovers(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name)


def wait_for(predicate, proc, what, timeout=120.0):
    end = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the process ended before {what}: {proc.stderr.read()}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize(("sig", "status", "earlier_run"), [(signal.SIGTERM, 143, True), (signal.SIGINT, 130, False)])
def test_a_compress_stopped_mid_run_cleans_up(tmp_path, sig, status, earlier_run):
    out = tmp_path / "run"
    if earlier_run:
        ds.run_recipe(ds.load_recipe({"model": "lenet300", "data": "digits", "stages": ["encode"]}), out)
    before = (out / "metrics.json").read_bytes() if earlier_run else None
    (tmp_path / "slow.yaml").write_text("stages:\n  - train: {epochs: 1000}\n  - encode\n")
    proc = subprocess.Popen([sys.executable, "-m", "deepslim", "compress", "lenet300", "--data", "digits", "--recipe",
                             "slow.yaml", "--out", "run", "--overwrite"], cwd=tmp_path, env=ENV,
                            preexec_fn=_default_sigint, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    # the new run is being built beside the old one: its input stage is measured and saved, training has begun
    wait_for(lambda: list(tmp_path.glob(".run.tmp-*/run/stages/00-input.dsz")), proc, "the first stage")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == status and err.strip().splitlines()[-1].startswith("deepslim: "), err
    assert leftovers(tmp_path) == []
    if earlier_run:  # the earlier run is untouched
        assert (out / "metrics.json").read_bytes() == before
    else:  # nothing to protect: the completed stages are kept, marked as a failed run
        doc = json.loads((out / "metrics.json").read_text())
        assert doc["status"] == "failed" and [m["stage"] for m in doc["stages"]] == ["input"]


SLOW_WRITE = """
import pathlib, sys, time
from deepslim.cli import main
real = pathlib.Path.write_bytes
def stuck(self, data):  # half the file written, then the process hangs
    real(self, data[: len(data) // 2])
    print("writing", flush=True)
    time.sleep(120)
pathlib.Path.write_bytes = stuck
sys.exit(main(sys.argv[1:]))
"""


def test_a_process_terminated_while_writing_leaves_neither_a_temporary_nor_a_half_file(tmp_path):
    (tmp_path / "m.dsz").write_bytes(b"earlier")
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITE, "pack", "lenet300", "-o", "m.dsz"], cwd=tmp_path,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline() == "writing\n"
    assert len(leftovers(tmp_path)) == 1  # the half-written temporary file exists now
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "terminated" in err
    assert leftovers(tmp_path) == [] and (tmp_path / "m.dsz").read_bytes() == b"earlier"


def test_version_names_deepslim_and_torch():
    from importlib.metadata import version

    import torch

    proc = subprocess.run([sys.executable, "-m", "deepslim", "--version"], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0
    assert proc.stdout.startswith(f"deepslim {version('deepslim')} (torch {torch.__version__}, Python ")
