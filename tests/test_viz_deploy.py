"""viz deploy and the dashboard's /deploy page: the deployment views are drawn from the simulation's
own numbers (busy time, the decode step table) and render in a browser."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from bokeh.document import Document

from tests.browser import BOKEH_READY, js_errors, open_browser, require_browser, screenshot_stats, wait_for
from viz.cli import main as viz
from viz.deployment import _busy_at, make_deploy_doc

SHOTS = Path(os.environ["VIZ_SCREENSHOTS"]) if os.environ.get("VIZ_SCREENSHOTS") else None


def test_busy_time_matches_a_plain_loop():
    rng = np.random.default_rng(0)
    start = np.sort(rng.uniform(0, 10, 200))
    end = start + rng.uniform(0.01, 0.5, 200)
    t = np.linspace(-1, 12, 57)
    want = [sum(max(0.0, min(x, e) - s) for s, e in zip(start, end)) for x in t]
    assert np.allclose(_busy_at(start, end, t), want)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    out = tmp_path_factory.mktemp("vizdeploy") / "d.html"
    assert viz(["deploy", "-o", str(out), "--prefill-nodes", "2", "--decode-nodes", "4", "--rate", "20",
                "--requests", "600", "--output-len", "100", "--slo-ttft", "2000", "--slo-tpot", "60"]) == 0
    return out


def test_viz_deploy_writes_the_three_views(page):
    text = page.read_text()
    for name in ("tradeoff", "utilisation", "cdf", "deploy-summary"):
        assert f'"name":"{name}"' in text.replace(" ", ""), name


def test_viz_deploy_bad_input(tmp_path, capsys):
    assert viz(["deploy", "-o", str(tmp_path / "d.txt")]) == 2
    assert viz(["deploy", "-o", str(tmp_path / "d.html"), "--rate", "-3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--rate" in err[1]
    assert not list(tmp_path.iterdir())


def test_viz_deploy_renders_in_a_browser(page):
    require_browser()
    driver = open_browser()
    try:
        driver.get(page.as_uri())
        wait_for(driver, BOKEH_READY, what="Bokeh to render the deployment page")
        time.sleep(1.0)
        png = driver.get_screenshot_as_png()
        non_white, colours = screenshot_stats(png)
        assert non_white > 0.02 and colours > 20, (non_white, colours)      # line charts: mostly white
        assert js_errors(driver) == []
        if SHOTS:
            SHOTS.mkdir(parents=True, exist_ok=True)
            (SHOTS / "viz-deploy.png").write_bytes(png)
    finally:
        driver.quit()


def test_dashboard_deploy_page_redraws_and_reports_bad_plans():
    doc = Document()
    make_deploy_doc(doc)
    status = doc.select_one({"name": "d-status"})
    body = doc.select_one({"name": "d-body"})
    assert status.text == "ok" and len(body.children) == 3
    before = body.children[0].text
    doc.select_one({"name": "d-decode_nodes"}).value = 9
    assert status.text == "ok" and body.children[0].text != before and "9 nodes" in body.children[0].text
    doc.select_one({"name": "d-prefill_nodes"}).value = 3       # 24 GPUs: one instance EP24 ... fine
    doc.select_one({"name": "d-slo_tpot"}).value = 1           # no batch meets 1 ms
    assert "no decode batch meets" in status.text
    doc.select_one({"name": "d-slo_tpot"}).value = 50
    assert status.text == "ok"
