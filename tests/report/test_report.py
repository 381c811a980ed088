"""The HTML report: its structure checked in Python, and rendered in headless Chromium — every chart drawn, no
console errors; bad run directories named."""

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

import deepslim as ds
from deepslim.report import load_run, write_report
from deepslim.report.charts import pareto

RECIPE = {"model": "lenet300", "data": "digits", "stages": [
    {"train": {"epochs": 2, "lr": 0.003}}, {"prune": {"sparsity": 0.8, "scope": "global", "epochs": 1}},
    {"cluster": {"bits": 4}}, "encode", {"export": {"threads": 1}}]}  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    ds.run_recipe(ds.load_recipe(RECIPE), base / "pruned")
    other = {**RECIPE, "stages": [{"train": {"epochs": 2, "lr": 0.003}}, {"quantize": {"bits": 8}}, "encode"]}
    ds.run_recipe(ds.load_recipe(other), base / "int8")
    return base


class Outline(HTMLParser):
    def __init__(self):
        super().__init__()
        self.figures, self.svgs_in_figures, self.cards, self.pres, self.external = 0, 0, 0, 0, []
        self.depth_in_figure = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "figure" and "chart" in a.get("class", ""):
            self.figures += 1
            self.depth_in_figure += 1
        elif tag == "svg" and self.depth_in_figure:
            self.svgs_in_figures += 1
        elif tag == "div" and a.get("class") == "card":
            self.cards += 1
        elif tag == "pre":
            self.pres += 1
        if tag in ("script", "img", "link", "iframe") and (a.get("src") or a.get("href")):
            self.external.append((tag, a.get("src") or a.get("href")))

    def handle_endtag(self, tag):
        if tag == "figure" and self.depth_in_figure:
            self.depth_in_figure -= 1


def test_run_directory_gets_a_report(runs):
    assert (runs / "pruned" / "report.html").is_file()  # compress writes it automatically
    doc = json.loads((runs / "pruned" / "metrics.json").read_text())
    assert doc["artifacts"]["report"].endswith("report.html") and doc["stages"][-1]["layers"]


def test_report_structure(runs, tmp_path):
    res = write_report([runs / "pruned", runs / "int8"], tmp_path / "r.html", title="two runs")
    page = (tmp_path / "r.html").read_text()
    outline = Outline()
    outline.feed(page)
    # trade-offs (size, latency) + per run: layer bars and roofline
    assert res.charts == outline.figures == outline.svgs_in_figures == 6
    assert outline.cards >= 10 and outline.pres == 2 and not outline.external  # self-contained
    assert "Pareto front" in page and "roofline on cortex-m7" in page and "two runs" in page
    assert res.problems == ()
    for layer in ("fc1", "fc2", "fc3"):
        assert f"<td>{layer}</td>" in page


def test_pareto_front():
    pts = [(10, 0.9), (5, 0.8), (20, 0.95), (7, 0.7), (15, 0.85), (5, 0.6)]
    assert pareto(pts) == [(5, 0.8), (10, 0.9), (20, 0.95)]


def test_bad_runs_are_named_and_partial_runs_still_render(runs, tmp_path):
    with pytest.raises(ds.ConfigError, match="metrics.json is missing"):
        write_report([tmp_path], tmp_path / "r.html")
    with pytest.raises(ds.ConfigError, match="not a directory"):
        load_run(tmp_path / "nope")
    partial = tmp_path / "partial"
    shutil.copytree(runs / "pruned", partial)
    (partial / "recipe.yaml").unlink()
    doc = json.loads((partial / "metrics.json").read_text())
    del doc["stages"][2]["accuracy"]
    (partial / "metrics.json").write_text(json.dumps(doc))
    res = write_report([partial], tmp_path / "p.html")
    assert any("recipe.yaml is missing" in p for p in res.problems)
    assert any("stage 2 (prune) lacks accuracy" in p for p in res.problems)
    page = (tmp_path / "p.html").read_text()
    assert "recipe.yaml is missing" in page and res.charts >= 3
    (partial / "metrics.json").write_text("{}")
    with pytest.raises(ds.ConfigError, match="not a deepslim run"):
        write_report([partial], tmp_path / "q.html")


# -- in a real browser -----------------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(*args):
    cmd = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--enable-logging=stderr", "--v=0", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _console_errors(stderr):
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs Debian's chromium)")
def test_report_renders_in_chromium(runs, tmp_path):
    from PIL import Image

    write_report([runs / "pruned", runs / "int8"], tmp_path / "r.html")
    url = (tmp_path / "r.html").as_uri()
    size = "--window-size=1280,9000"
    dom = _chromium(size, "--virtual-time-budget=5000", "--dump-dom", url)
    assert not _console_errors(dom.stderr), _console_errors(dom.stderr)
    boxes = json.loads(re.search(r"data-charts=\"([^\"]*)\"", dom.stdout).group(1).replace("&quot;", '"'))
    assert len(boxes) == 6
    shot = _chromium(size, "--virtual-time-budget=5000", f"--screenshot={tmp_path / 'shot.png'}", url)
    assert not _console_errors(shot.stderr)
    image = Image.open(tmp_path / "shot.png").convert("L")
    for box in boxes:
        assert box["w"] > 200 and box["h"] > 150, box
        region = image.crop((int(box["x"]), int(box["y"]), int(box["x"] + box["w"]), int(box["y"] + box["h"])))
        ink = sum(region.histogram()[:200]) / (region.width * region.height)  # share of non-background pixels
        assert ink > 0.01, f"chart {box['id']} looks blank ({ink:.4f} of its pixels drawn)"


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
def test_console_error_detection_works(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    assert _console_errors(_chromium("--dump-dom", page.as_uri()).stderr)  # the check above can fail


def test_the_stage_table_names_the_runtime_threads_and_machine_load_and_reads_version_1_runs(runs, tmp_path):
    doc = json.loads((runs / "pruned" / "metrics.json").read_text())
    export = doc["stages"][-1]
    assert doc["version"] == 2 and export["runtime"] == "onnxruntime" and export["threads"] == 1
    page = write_report([runs / "pruned"], tmp_path / "r.html") and (tmp_path / "r.html").read_text()
    assert "(onnxruntime, 1 thread)" in page and "machine load" in page
    old = tmp_path / "old"  # a run written before the Measurement record: version 1, none of its new keys
    shutil.copytree(runs / "pruned", old)
    new_keys = {"metric", "metric_value", "device", "runtime", "threads", "peak_activation_bytes", "load_average"}
    doc["version"], doc["stages"] = 1, [{k: v for k, v in s.items() if k not in new_keys} for s in doc["stages"]]
    (old / "metrics.json").write_text(json.dumps(doc))
    res = write_report([old], tmp_path / "o.html")
    page = (tmp_path / "o.html").read_text()
    assert not res.problems and "(onnxruntime" not in page and res.charts >= 3
