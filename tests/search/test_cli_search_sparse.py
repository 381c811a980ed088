"""``deepslim search --space sparsity,kmeans`` under a size budget on the command line (issue 14's space gaps,
session 10): the chosen policy's sparsity and k-means bits are written as ordinary recipe stages, and ``deepslim
compress`` rebuilds the archive the search judged, byte for byte in length. Latency from the fakes of
tests/search/test_cli_search_run.py (the command, not the runtime's clock, is tested)."""

import json
from pathlib import Path

import pytest
import yaml

from deepslim.cli import main
from tests.search.test_cli_search_run import MODEL, fake_latency  # noqa: F401  (the fixture)

pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")


def test_a_size_search_over_sparsity_and_kmeans_writes_a_recipe_compress_rebuilds_to_the_judged_bytes(
        capsys, tmp_path, fake_latency):  # noqa: F811  # fmt: skip
    out = tmp_path / "s"
    code = main(["search", MODEL, "--data", "digits", "--budget", "size=0.5x", "--objective", "accuracy,size",
                 "--space", "sparsity,kmeans", "--trials", "8", "--strategy", "random",
                 "--finetune-epochs", "0", "--top-k", "1", "--remeasure-repeats", "1", "--seed", "0",
                 "--out", str(out), "--json"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    doc = json.loads(captured.out)
    best, space = doc["best"], doc["space"]
    assert set(space["kinds"]) == {"sparsity", "kmeans"} and space["sparsity"] == [0.0, 0.5, 0.75, 0.9]
    assert best["archive_bytes"] <= doc["limits"]["size"] < doc["dense"]["archive_bytes"]
    sparse = {n: s for n, s in best["policy"]["sparsity"].items() if s > 0}
    shared = {n: b for n, b in best["policy"]["kmeans"].items() if b > 0}
    assert sparse or shared  # what halved the archive
    stages = yaml.safe_load(Path(doc["recipe"]).read_text())["stages"]
    methods = [(kind, body.get("method")) for s in stages for kind, body in s.items()]
    assert (("prune", "magnitude") in methods) == bool(sparse) and (("cluster", "kmeans") in methods) == bool(shared)
    assert main(["compress", MODEL, "--recipe", doc["recipe"], "--out", str(tmp_path / "run"), "--json"]) == 0
    written = json.loads(capsys.readouterr().out)["stages"][-1]["model_file"]
    assert Path(written).stat().st_size == best["archive_bytes"]  # the .dsz compress writes is the one judged


def test_sparsity_or_kmeans_in_a_latency_only_search_is_refused_naming_the_size_objective(
        capsys, tmp_path, fake_latency):  # noqa: F811  # fmt: skip
    out = tmp_path / "s"
    code = main(["search", MODEL, "--data", "digits", "--budget", "latency=0.9x", "--space", "prune,sparsity",
                 "--trials", "2", "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "add the size objective or a size budget (--objective size" in err
    assert not (out / "recipe.yaml").exists()
