"""The search report page: self-contained, and its script draws the front, selects the best policy, shows a hovered
point's policy and measurement and selects a clicked one (headless Chromium)."""

import html
import json
import re
import shutil
import subprocess

import pytest

from deepslim.report.search_html import front_line, search_report_html, write_search_report


def cand(trial, acc, ms, keep, int8, feasible=True, measured=None):
    m = {"macs": int(1e6 * ms), "params": 100, "nonzero_params": 100, "weight_bytes": 400}
    return {"trial": trial, "policy": {"keep": {"conv1": keep}, "int8": {"conv1": int8, "fc": False}},
            "accuracy": acc, "latency_ms": ms, "measured_latency_ms": measured, "predicted_latency_ms": ms,
            "archive_bytes": 1000, "macs": m["macs"], "feasible": feasible, "recovery": "bn", "measurement": m}


def search_doc():
    trials = [cand(0, 0.80, 0.9, 16, False, False), cand(1, 0.78, 0.5, 8, True), cand(2, 0.70, 0.3, 4, True),
              cand(3, 0.60, 0.45, 4, False)]
    return {"objectives": ["accuracy", "latency"], "budget": [{"text": "latency=0.5x"}], "limits": {"latency": 0.5},
            "dense": cand(None, 0.81, 1.0, 16, False, False, 1.0),
            "uniform": cand(None, 0.74, 0.48, 8, True, True, 0.48),
            "best": cand(1, 0.79, 0.49, 8, True, True, 0.49), "pareto": trials[1:3], "trials": trials,
            "uniform_family": [cand(None, 0.74, 0.48, 8, True)],
            "latency_table": {"error_p90": 0.08, "kendall_tau": 0.9, "mac_proxy_kendall_tau": 0.5, "points": 2,
                              "rows": [{"predicted_ms": 1.0, "measured_ms": 1.05}, {"predicted_ms": 0.5,
                                                                                      "measured_ms": 0.49}]},
            "cost": {"trials": 4, "wall_s": 10.0, "cpu_s": 8.0, "energy_kwh": 3e-5},
            "space": {"groups": [{"name": "conv1", "width": 16, "keep": [4, 8, 16]}], "int8_layers": ["conv1", "fc"]}}


def test_the_page_needs_no_network_and_embeds_the_search():
    page = search_report_html(search_doc(), title="t </script> & <b>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page and "@import" not in page
    assert "t &lt;/script&gt; &amp; &lt;b&gt;" in page  # the title is escaped
    assert page.count("</script>") == 2  # the embedded JSON cannot close its script element
    assert "relative error p90 8.0%, Kendall τ 0.90 (MAC count: τ 0.50)" in page


def _dom_in_chromium(doc, tmp_path):
    """``doc``'s report page as headless Chromium renders it (skips without Chromium)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed")
    path = tmp_path / "search.html"
    write_search_report(doc, path)
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", path.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout  # fmt: skip
    return dom


def test_headless_chromium_draws_every_point_and_selects_the_best(tmp_path):
    dom = _dom_in_chromium(search_doc(), tmp_path)
    front = dom[dom.index('id="front"'):dom.index('id="bars"')]
    # 4 trials + 2 Pareto points + dense, uniform and best as circles; the uniform family as a square
    assert front.count("<circle") == 9 and front.count("<rect") == 1
    assert front.count('class="pt sel"') == 1  # the best policy is selected on load
    assert re.search(r'id="chosen">best \(trial 1\)<', dom)
    bars = dom[dom.index('id="bars"'):dom.index('id="pred"')]
    assert "8 / 16 channels" in bars and bars.count(">int8<") == 1 and bars.count(">float<") == 1
    pred = dom[dom.index('id="pred"'):]
    assert pred.count("<circle") == 2


def test_the_page_names_the_node_table_shows_verdicts_and_survives_a_single_check_point():
    doc = search_doc()
    doc["latency_table"].update(latency_model="nodes", kendall_tau=None, mac_proxy_kendall_tau=None, points=1)
    doc["best"]["remeasured"] = {"verdict": "within noise", "measured_ms": 0.49}
    page = search_report_html(doc)
    assert "node table: relative error p90 8.0%, Kendall τ n/a (MAC count: τ n/a) over 1 measurements" in page
    assert "<td>within noise</td>" in page and page.count("<td>not re-measured</td>") == 2  # dense, uniform
    assert "layer table: relative error" in search_report_html(search_doc())  # no latency_model: the layer table


def _memory_doc():
    """A memory search: every candidate with its peak activation bytes (trial 3's lost: not drawn on this axis)."""
    doc = search_doc()
    doc.update(objectives=["accuracy", "memory"], budget=[{"metric": "memory", "text": "memory=0.5x"}],
               limits={"memory": 2500.0})  # fmt: skip
    peaks = {0: 4096, 1: 2048, 2: 1024, 3: None}
    for c in doc["trials"]:
        c["peak_activation_bytes"] = peaks[c["trial"]]
    for label, peak in (("dense", 5000), ("uniform", 2304), ("best", 2048)):
        doc[label]["peak_activation_bytes"] = peak
    doc["uniform_family"][0]["peak_activation_bytes"] = 2304
    return doc


def test_a_memory_search_is_drawn_against_peak_activation_bytes_labelled_and_formatted_as_bytes(tmp_path):
    page = search_report_html(_memory_doc())
    assert "<th>peak activation B</th>" in page and "<td>5,000</td>" in page and "<td>2,048</td>" in page
    assert "<th>energy µJ</th>" not in page  # only the metrics the search used get a column
    assert '"axis": {"metric": "memory", "key": "peak_activation_bytes", "label": "peak activation memory (bytes, ' \
           'batch 1)", "unit": "bytes", "limit": 2500.0}' in page  # fmt: skip
    dom = _dom_in_chromium(_memory_doc(), tmp_path)
    front = dom[dom.index('id="front"'):dom.index('id="bars"')]
    assert ">peak activation memory (bytes, batch 1)<" in front and ">latency (ms" not in front
    ticks = re.findall(r'text-anchor="middle"[^>]*>([^<]+)<', front)
    assert all(re.fullmatch(r"\d+(\.\d+)? kB|\d+ B", t) for t in ticks[:5]), ticks  # bytes, not 4.10e+3
    assert front.count("<circle") == 8  # 3 of 4 trials (one has no peak), 2 Pareto points, dense, uniform, best
    xs = {float(x) for x in re.findall(r'<circle[^>]*cx="([\d.]+)"[^>]*r="4"', front)}
    line = float(re.search(r'<line x1="([\d.]+)" x2="[\d.]+" y1="20"', front).group(1))  # the budget
    assert len(xs) == 3 and min(xs) < line < max(xs)  # 1 kB and 2 kB within 2.5 kB, 4 kB beyond


def test_the_selected_policys_bars_show_its_sparsity_and_kmeans_bits(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed")
    doc = search_doc()
    doc["best"]["policy"].update(sparsity={"conv1": 0.75, "fc": 0.0}, kmeans={"conv1": 6, "fc": 4})
    path = tmp_path / "search.html"
    write_search_report(doc, path)
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", path.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout  # fmt: skip
    bars = dom[dom.index('id="bars"'):dom.index('id="pred"')]
    assert ">sparsity 0.75<" in bars and ">k-means 4 bits<" in bars  # fc: float, clustered
    assert "k-means 6 bits" not in bars and "sparsity 0<" not in bars  # conv1 is int8 (not clustered); fc dense


def _pool_doc():
    """A single-objective search.json as session 14 first wrote it: the finals' pool under ``pareto`` (the pool of
    test_search_focus: trial 3 at 0.95 slower than trial 5 at 0.93, trial 1 at 0.90 slower still)."""
    doc = search_doc()
    pool = [cand(3, 0.95, 0.9, 8, True), cand(5, 0.93, 0.7, 8, False), cand(4, 0.93, 0.8, 4, True),
            cand(1, 0.90, 1.0, 4, False)]  # fmt: skip
    doc.update(objectives=["accuracy"], pareto=pool, trials=pool)
    return doc


def test_only_a_front_is_drawn_as_a_line_whatever_pareto_holds(tmp_path):
    doc = _pool_doc()
    assert front_line(doc, "latency_ms") == [1, 0]  # trials 5 then 3; 4 (as accurate as 5, slower) and 1 beaten
    assert front_line(search_doc(), "latency_ms") == [1, 0]  # a real front: every point, by latency
    dom = _dom_in_chromium(doc, tmp_path)
    front = dom[dom.index('id="front"'):dom.index('id="bars"')]
    xy = [tuple(map(float, p.split(","))) for p in re.search(r'<polyline points="([^"]+)"', front).group(1).split()]
    assert len(xy) == 2 and xy[0][0] < xy[1][0] and xy[0][1] > xy[1][1]  # right is slower, up (smaller y) is better
    assert front.count("<circle") == 4 + 2 + 3  # 4 trials, the 2 front points, dense, uniform, best


# Runs after the page's own script: hit-tests the middle of the front's point SELECTOR (the element a real pointer
# there would reach), sends it what a mouse sends (mouseover, mousemove, then mouseleave; click), and writes what the
# page shows after each step into <pre id="probe"> for --dump-dom.
_PROBE = r"""<script>
(function () {
  const out = {};
  try {
    const n = document.querySelector(SELECTOR);
    n.scrollIntoView({block: 'center'});
    const r = n.getBoundingClientRect(), x = r.left + r.width / 2, y = r.top + r.height / 2;
    const hit = document.elementFromPoint(x, y);
    out.hit = hit === n;
    const send = (t, type) => t.dispatchEvent(new MouseEvent(type, {bubbles: type !== 'mouseleave', cancelable: true,
      view: window, clientX: x, clientY: y}));
    const tip = document.getElementById('tip');
    send(hit, 'mouseover'); send(hit, 'mousemove');
    out.tip_display = getComputedStyle(tip).display; out.tip = tip.textContent;
    send(hit, 'mouseleave');
    out.tip_display_after_leave = getComputedStyle(tip).display;
    out.bars_before = [...document.querySelectorAll('#bars text')].map(e => e.textContent);
    send(hit, 'mousedown'); send(hit, 'mouseup'); send(hit, 'click');
    out.clicked_selected = n.classList.contains('sel');
    out.selected = document.querySelectorAll('#front .sel').length;
    out.chosen = document.getElementById('chosen').textContent;
    out.bars = [...document.querySelectorAll('#bars text')].map(e => e.textContent);
    out.bar_widths = [...document.querySelectorAll('#bars rect')].map(e => Number(e.getAttribute('width')));
  } catch (e) { out.error = String(e); }
  const pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script></body>"""


def _hover_and_click(doc, selector, tmp_path):
    """What the page shows when a pointer hovers, leaves, then clicks the front's point ``selector``, in headless
    Chromium (skips without it): the probe's record (``tip``, ``chosen``, ``bars`` …)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed")
    path = tmp_path / "search.html"
    write_search_report(doc, path)
    page = path.read_text(encoding="utf-8")
    assert page.count("</body>") == 1
    path.write_text(page.replace("</body>", _PROBE.replace("SELECTOR", json.dumps(selector))), encoding="utf-8")
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1000,800",
                          "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120,
                         check=True).stdout  # fmt: skip
    probe = json.loads(html.unescape(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S).group(1)))
    assert "error" not in probe, probe
    return probe


def test_hovering_a_point_shows_its_policy_and_measurement_and_clicking_selects_it(tmp_path):
    probe = _hover_and_click(search_doc(), '#front [data-label="trial"][data-trial="3"]', tmp_path)
    assert probe["hit"]  # a pointer at the point's middle reaches the point
    assert probe["tip_display"] == "block" and probe["tip_display_after_leave"] == "none"
    tip = probe["tip"].split("\n")
    assert tip[:3] == ["trial (trial 3)", "accuracy 0.6000", "latency 0.4500 ms (predicted)"]
    assert "MACs 450000" in tip and "within budget: yes" in tip and "  conv1: 4" in tip
    assert tip[-1] == "int8 layers: none"
    # before the click the best (trial 1: 8 channels, conv1 int8) is drawn; after it, trial 3's policy
    assert "8 / 16 channels" in probe["bars_before"] and probe["bars_before"].count("int8") == 1
    assert probe["clicked_selected"] and probe["selected"] == 1 and probe["chosen"] == "trial (trial 3)"
    assert "4 / 16 channels" in probe["bars"] and "8 / 16 channels" not in probe["bars"]
    assert probe["bars"].count("float") == 2 and "int8" not in probe["bars"]
    assert probe["bar_widths"][0] == pytest.approx(300 * 4 / 16)


def _depth_hpo_doc():
    """A search over depth and the recovery (kinds depth, hpo): trial 5 drops block layer1.0 (its group and layers
    keep the dense values, as a canonical policy does) and keeps layer1.1 at 8 channels, with its own recovery."""
    doc = search_doc()
    doc["space"] = {"groups": [{"name": "layer1.0.conv1", "width": 16, "keep": [8, 16]},
                               {"name": "layer1.1.conv1", "width": 16, "keep": [8, 16]}],
                    "int8_layers": ["conv1", "layer1.0.conv1", "layer1.1.conv1", "fc"],
                    "blocks": ["layer1.0", "layer1.1"],
                    "recovery": {"lr": [1e-3, 3e-3], "finetune_epochs": [1, 2], "temperature": [None, 4.0]}}
    c = cand(5, 0.75, 0.35, 8, False)
    c["policy"] = {"keep": {"layer1.0.conv1": 16, "layer1.1.conv1": 8},
                   "int8": {"conv1": True, "layer1.0.conv1": True, "layer1.1.conv1": False, "fc": False},
                   "recovery": {"lr": 0.003, "finetune_epochs": 2, "temperature": None},
                   "sparsity": {"layer1.0.conv1": 0.5, "layer1.1.conv1": 0.0},
                   "drop": {"layer1.0": True, "layer1.1": False}}
    doc["trials"].append(c)
    return doc


def test_a_dropped_block_and_the_searched_recovery_are_shown_on_hover_and_in_the_bars(tmp_path):
    probe = _hover_and_click(_depth_hpo_doc(), '#front [data-label="trial"][data-trial="5"]', tmp_path)
    tip = probe["tip"].split("\n")
    assert "blocks dropped: layer1.0 (1 of 2)" in tip
    assert "recovery: lr 0.003, finetune_epochs 2, temperature none (labels only)" in tip
    assert "  layer1.0.conv1: dropped" in tip and "  layer1.1.conv1: 8" in tip
    assert tip[-1] == "int8 layers: conv1"  # layer1.0.conv1's int8 went with its block
    assert probe["chosen"] == "trial (trial 5)"
    bars, widths = probe["bars"], probe["bar_widths"]
    # rows: the 2 blocks, the 2 groups, the 4 layers (no sparsity row: layer1.0.conv1's lies in the dropped block)
    assert bars[:6] == ["layer1.0", "dropped", "layer1.1", "kept", "layer1.0.conv1", "dropped (block layer1.0)"]
    assert bars[6:8] == ["layer1.1.conv1", "8 / 16 channels"] and "16 / 16 channels" not in bars
    assert bars[8:16] == ["conv1", "int8", "layer1.0.conv1", "dropped", "layer1.1.conv1", "float", "fc", "float"]
    assert not any(b.startswith("sparsity") for b in bars)
    assert bars[-1] == "recovery: lr 0.003, finetune_epochs 2, temperature none (labels only)"
    assert widths == [0, 300, 0, 150, 150, 0, 300, 300]
    # a policy without depth or recovery choices says nothing of either
    plain = _hover_and_click(_depth_hpo_doc(), '#front [data-label="trial"][data-trial="3"]', tmp_path)
    assert not any(t.startswith(("blocks dropped", "recovery")) for t in plain["tip"].split("\n"))
    assert "layer1.0" in plain["bars"] and plain["bars"][1] == "kept"  # the space's blocks: all kept
