"""viz: the HTML report and the served dashboard, opened in a real headless browser - a
screenshot that is not blank, the expected rows, no JavaScript errors - and the dashboard's
behaviour (widget change redraws, bad uploads answered in the page)."""
from __future__ import annotations

import base64
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from bokeh.document import Document

from tracegen.cli import main as tracegen
from viz.app import make_doc
from viz.cli import main as viz

from .browser import (
    BOKEH_READY,
    js_errors,
    model_js,
    open_browser,
    require_browser,
    screenshot_stats,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[1]
OBS = ROOT / "traces" / "observed" / "h100"
SHOTS = Path(os.environ.get("VIZ_SCREENSHOTS", "")) if os.environ.get("VIZ_SCREENSHOTS") else None


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    d = tmp_path_factory.mktemp("viz")
    pred = d / "pred.json.gz"
    assert tracegen(["trace", "--hardware", "h100", "--comm", "pcie-copy", "--batch", "2", "--seq-len", "4096",
                     "--dp", "32", "--skip-dense", "--layers", "4", "-o", str(pred)]) == 0
    single = d / "single.html"
    assert viz(["html", str(pred), "-o", str(single), "--no-cache"]) == 0
    cmp = d / "compare.html"
    assert viz(["html", str(pred), str(OBS / "layers-proper.json.gz"), "--taxonomy", str(OBS / "taxonomy.toml"),
                "-o", str(cmp), "--no-cache"]) == 0
    return {"single": single, "compare": cmp}


def test_html_is_self_contained(reports):
    text = reports["compare"].read_text()
    assert "overlap-summary" in text and "Bokeh" in text
    assert not re.search(r"<script[^>]+src=\"https?://", text)      # resources inline: opens offline


def test_bad_viz_input(tmp_path, capsys):
    assert viz(["html", str(tmp_path / "nope.json"), "-o", str(tmp_path / "r.html")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert viz(["html", str(OBS / "layers-proper.json.gz"), "-o", str(tmp_path / "r.txt")]) == 2
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("name,rows", [("single", ["r0 compute stream", "r0 comm stream"]),
                                       ("compare", ["r0 compute stream", "r0 stream 7"])])
def test_report_renders_in_a_browser(reports, name, rows, tmp_path):
    require_browser()
    driver = open_browser()
    try:
        driver.get(reports[name].as_uri())
        wait_for(driver, BOKEH_READY, what="Bokeh to render the report")
        time.sleep(1.0)
        factors = []
        for fig in ("timeline", "predicted", "observed"):
            got = driver.execute_script(model_js(fig, "m.y_range.factors"))
            factors += got or []
        for r in rows:
            assert r in factors, (r, factors)
        assert "overlap-summary" in driver.page_source
        png = driver.get_screenshot_as_png()
        non_white, colours = screenshot_stats(png)
        assert non_white > 0.05 and colours > 20, (non_white, colours)
        assert js_errors(driver) == []
        if SHOTS:
            SHOTS.mkdir(parents=True, exist_ok=True)
            (SHOTS / f"viz-html-{name}.png").write_bytes(png)
    finally:
        driver.quit()


# ----------------------------------------------------------------------------- dashboard
def test_dashboard_redraws_on_widget_change_and_survives_bad_uploads():
    doc = Document()
    make_doc(doc)
    status = doc.select_one({"name": "status"})
    fig = doc.select_one({"name": "predicted"})
    assert "prefill" in fig.title.text and "ok" in status.text
    before = fig.renderers[0].data_source.data["end"][-1]
    doc.select_one({"name": "phase"}).value = "decode"
    doc.select_one({"name": "comm"}).value = "ibgda"
    fig2 = doc.select_one({"name": "predicted"})
    assert fig2 is not fig and "decode" in fig2.title.text
    assert fig2.renderers[0].data_source.data["end"][-1] != before
    up = doc.select_one({"name": "upload"})
    up.set_from_json("filename", "bad.json")
    up.set_from_json("value", "###")
    assert "not valid base64" in status.text
    up.set_from_json("value", base64.b64encode(b'{"traceEvents": [').decode())
    assert "truncated" in status.text
    doc.select_one({"name": "tp"}).value = 3          # a plan error: shown, nothing breaks
    assert "does not divide" in status.text
    doc.select_one({"name": "tp"}).value = 1
    up.set_from_json("filename", "layers-proper.json.gz")
    up.set_from_json("value", base64.b64encode((OBS / "layers-proper.json.gz").read_bytes()).decode())
    names = [c.name for c in doc.select_one({"name": "body"}).children]
    assert "predicted" in names and "observed" in names and "errors" in names


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def served():
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "viz.cli", "serve", "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        assert f"http://localhost:{port}/" in line, line
        yield f"http://localhost:{port}/", proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_served_dashboard_in_a_browser(served):
    url, proc = served
    with urllib.request.urlopen(url, timeout=20) as r:
        assert r.status == 200
    require_browser()
    driver = open_browser()
    try:
        driver.get(url)
        wait_for(driver, BOKEH_READY, timeout=60, what="the dashboard")
        wait_for(driver, model_js("predicted", "m.title.text"), timeout=60, what="the predicted timeline")
        rows = driver.execute_script(model_js("predicted", "m.y_range.factors"))
        assert "r0 compute stream" in rows and "r0 comm stream" in rows
        png = driver.get_screenshot_as_png()
        non_white, colours = screenshot_stats(png)
        assert non_white > 0.05 and colours > 20, (non_white, colours)
        if SHOTS:
            (SHOTS / "viz-serve.png").write_bytes(png)
        # a widget change in the page redraws the prediction on the server
        driver.execute_script("Bokeh.documents[0].get_model_by_name('phase').value = 'decode';")
        wait_for(driver, model_js("predicted", "m.title.text.includes('decode')"), timeout=60,
                 what="the redrawn decode timeline")
        # a corrupt upload: a message in the page, and the server keeps serving
        driver.execute_script("const m = Bokeh.documents[0].get_model_by_name('upload');"
                              "m.setv({filename: 'broken.json', value: 'eyJ0cmFjZUV2ZW50cyI6IFs='});")
        wait_for(driver, model_js("status", "m.text.includes('cannot load broken.json')"), timeout=60,
                 what="the error message in the page")
        assert js_errors(driver) == []
    finally:
        driver.quit()
    with urllib.request.urlopen(url, timeout=20) as r:
        assert r.status == 200
    assert proc.poll() is None


def test_layer_breakdown_axis_follows_layer_count(tmp_path):
    """A few layers get one labelled bar each; a deep model (61 layers x 2 traces = 122 bars) gets a
    numeric layer axis with the traces dodged - either way every bar stacks to its layer's
    compute + exposed comm + idle = span, and hidden comm equals the analysed overlap."""
    from bokeh.models import FactorRange

    from replay.analyze import analyze
    from viz.report import CATEGORICAL_MAX_BARS, layer_breakdown

    for layers in (4, 61):
        out = tmp_path / f"d{layers}.json.gz"
        assert tracegen(["trace", "--phase", "decode", "--ranks", "1", "--layers", str(layers), "-o", str(out)]) == 0
        a = analyze(out, use_cache=False)
        p = layer_breakdown([("pred", a), ("again", a)], [0, 0])
        src = p.renderers[0].data_source.data
        assert len(src["layer"]) == 2 * layers
        assert isinstance(p.x_range, FactorRange) == (2 * layers <= CATEGORICAL_MAX_BARS)
        lay = a.layers[a.layers["rank"] == a.layers["rank"].min()].sort_values("layer")
        span = list(lay["span_us"] / 1e3) * 2
        total = [c + e + i for c, e, i in zip(src["compute"], src["exposed comm"], src["idle"])]
        assert total == pytest.approx(span, rel=1e-9, abs=1e-9)
        assert list(src["hidden comm"]) == pytest.approx(list(lay["overlap_us"] / 1e3) * 2)
