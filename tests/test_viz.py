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
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from bokeh.document import Document
from bokeh.events import ButtonClick

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
from .helpers import read_trace, slices

ROOT = Path(__file__).resolve().parents[1]
OBS = ROOT / "traces" / "observed" / "h100"
SHOTS = Path(os.environ.get("VIZ_SCREENSHOTS", "")) if os.environ.get("VIZ_SCREENSHOTS") else None


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    d = tmp_path_factory.mktemp("viz")
    pred = d / "pred.json.gz"
    assert tracegen(["trace", "--hardware", "h100", "--comm", "pcie-copy", "--batch", "2", "--seq-len", "4096",
                     "--dp", "32", "--routing", "spread", "--skip-dense", "--layers", "4", "-o", str(pred)]) == 0
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


def _layer_truth(path) -> dict[int, dict[str, float]]:
    """Per layer of rank 0, straight from the trace file with plain loops (no replay code): compute
    time, communication hidden by any compute, exposed communication, and idle: every gap of the
    compute stream charged once, to the layer of the compute slice after it (the time before the
    first slice to the first, after the last to the last), in ms."""
    sl = [e for e in slices(read_trace(path)) if e["pid"] == 0 and e["cat"] in ("compute", "comm")]
    comp = sorted((e["ts"], e["ts"] + e["dur"]) for e in sl if e["cat"] == "compute")
    cs = sorted((e for e in sl if e["cat"] == "compute"), key=lambda e: e["ts"])
    charged: dict[int, float] = {}
    lo, hi = min(e["ts"] for e in sl), max(e["ts"] + e["dur"] for e in sl)
    charged[cs[0]["args"]["layer"]] = cs[0]["ts"] - lo
    for a, b in zip(cs, cs[1:]):
        charged[b["args"]["layer"]] = charged.get(b["args"]["layer"], 0.0) + max(0.0, b["ts"] - (a["ts"] + a["dur"]))
    charged[cs[-1]["args"]["layer"]] = charged.get(cs[-1]["args"]["layer"], 0.0) + hi - (cs[-1]["ts"] + cs[-1]["dur"])
    out = {}
    for layer in sorted({e["args"]["layer"] for e in sl}):
        mine = [e for e in sl if e["args"]["layer"] == layer]
        c = sum(e["dur"] for e in mine if e["cat"] == "compute")        # one compute stream: no overlap
        hidden = comm = 0.0
        for e in (x for x in mine if x["cat"] == "comm"):               # one comm stream: disjoint
            s, t = e["ts"], e["ts"] + e["dur"]
            comm += t - s
            hidden += sum(max(0.0, min(t, b) - max(s, a)) for a, b in comp)
        span = max(e["ts"] + e["dur"] for e in mine) - min(e["ts"] for e in mine)
        exposed = comm - hidden
        out[layer] = {"compute": c / 1e3, "hidden comm": hidden / 1e3, "exposed comm": exposed / 1e3,
                      "idle": charged.get(layer, 0.0) / 1e3, "span": span / 1e3}
    return out


def test_layer_breakdown_axis_follows_layer_count(tmp_path):
    """A few layers get one labelled bar each; a deep model (61 layers x 2 traces = 122 bars) gets a
    numeric layer axis with the traces dodged - either way every bar holds the layer's compute,
    hidden and exposed communication and idle as computed from the trace file itself."""
    from bokeh.models import FactorRange

    from replay.analyze import analyze
    from viz.report import CATEGORICAL_MAX_BARS, layer_breakdown

    for layers in (4, 61):
        pred, slow = tmp_path / f"d{layers}.json.gz", tmp_path / f"s{layers}.json.gz"
        base = ["trace", "--phase", "decode", "--ranks", "1", "--layers", str(layers)]
        assert tracegen([*base, "-o", str(pred)]) == 0
        assert tracegen([*base, "--scaleout-gbps", "10", "-o", str(slow)]) == 0
        p = layer_breakdown([("pred", analyze(pred, use_cache=False)), ("slow", analyze(slow, use_cache=False))],
                            [0, 0])
        src = p.renderers[0].data_source.data
        bars = layers + (layers == 61)      # every layer: the LM head's too
        assert len(src["layer"]) == 2 * bars
        assert isinstance(p.x_range, FactorRange) == (2 * bars <= CATEGORICAL_MAX_BARS)
        for label, path in (("pred", pred), ("slow", slow)):
            truth = _layer_truth(path)
            rows = [i for i, t in enumerate(src["trace"]) if t == label]
            assert [src["layer"][i] for i in rows] == sorted(truth)
            for k in ("compute", "hidden comm", "exposed comm", "idle"):
                assert [src[k][i] for i in rows] == pytest.approx([truth[L][k] for L in sorted(truth)],
                                                                  rel=1e-6, abs=1e-6), (label, k)
        for label, path in (("pred", pred), ("slow", slow)):        # each idle gap counted once over the layers
            rows = [i for i, t in enumerate(src["trace"]) if t == label]
            a = analyze(path, use_cache=False)
            assert sum(src["idle"][i] for i in rows) == pytest.approx(
                sum(a.idle_totals[0].values()) / 1e3, rel=1e-6, abs=1e-3)
        assert sum(src["exposed comm"][i] for i, t in enumerate(src["trace"]) if t == "slow") > \
            sum(src["exposed comm"][i] for i, t in enumerate(src["trace"]) if t == "pred")


def test_dashboard_and_cli_resolve_the_same_plan(tmp_path):
    """One resolver (tracegen/resolve.py): the dashboard's widget values and the same choices as CLI
    flags give the same plan, hardware and span; switching to Ascend picks its own backend."""
    from viz.app import predict
    values = {"model": "deepseek-v3", "hardware": "h20", "preset": "default", "phase": "decode", "batch": 48,
              "tp": 1, "dp": 16, "ep": 0, "tbo": "proper", "comm": "ibgda", "layers": 5, "ranks": 2}
    a = predict(values, tmp_path)
    cli = tmp_path / "cli.json"
    assert tracegen(["trace", "--hardware", "h20", "--phase", "decode", "--batch", "48", "--tp", "1", "--dp", "16",
                     "--comm", "ibgda", "--layers", "5", "--ranks", "2", "-o", str(cli)]) == 0
    want = read_trace(cli)["otherData"]
    got = a.trace.meta["otherData"]
    assert got["plan"] == want["plan"] and got["hardware_spec"] == want["hardware_spec"]
    assert got["span_us"] == want["span_us"]
    doc = Document()
    make_doc(doc)
    doc.select_one({"name": "phase"}).value = "decode"
    doc.select_one({"name": "comm"}).value = "ibgda"           # which the 910C does not have
    doc.select_one({"name": "hardware"}).value = "ascend-910c"
    ascend = tmp_path / "ascend.json"
    assert tracegen(["trace", "--hardware", "ascend-910c", "--phase", "decode", "--layers", "2", "-o",
                     str(ascend)]) == 0
    assert doc.select_one({"name": "comm"}).value == read_trace(ascend)["otherData"]["plan"]["comm"]


# ----------------------------------------------------------------------------- the dashboard, trusted
def test_dashboard_clears_errors_keeps_numbers_valid_and_caps_uploads(monkeypatch):
    import viz.app as app
    doc = Document()
    make_doc(doc)
    status = doc.select_one({"name": "status"})
    tp = doc.select_one({"name": "tp"})
    tp.value = 3                                    # 61 heads: no
    assert "does not divide" in status.text
    tp.value = 1
    assert "cannot" not in status.text and "ok" in status.text          # the next success clears it
    batch = doc.select_one({"name": "batch"})
    batch.value = None                              # a cleared number box
    assert batch.value == 4 and "needs a number" in status.text
    batch.value = 1e9                               # beyond its range
    assert batch.value == 4 and "needs a number" in status.text
    monkeypatch.setattr(app, "MAX_UPLOAD_MB", 0.001)
    up = doc.select_one({"name": "upload"})
    up.set_from_json("filename", "big.json")
    up.set_from_json("value", base64.b64encode(b"x" * 5000).decode())
    assert "larger than" in status.text
    path = doc.select_one({"name": "path"})
    assert path.disabled                            # no --data-dir: uploads only


def test_dashboard_paths_stay_inside_the_data_folder(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "run.json.gz").write_bytes((OBS / "layers-proper.json.gz").read_bytes())
    (tmp_path / "secret.json").write_text('{"traceEvents": []}')
    (data / "link.json").symlink_to(tmp_path / "secret.json")
    doc = Document()
    make_doc(doc, data_dir=str(data))
    status = doc.select_one({"name": "status"})
    path, load = doc.select_one({"name": "path"}), doc.select_one({"name": "load"})
    for bad in ("/etc/passwd", "../secret.json", "link.json"):
        path.value = bad
        load._trigger_event(ButtonClick(load))
        assert "only files inside the data folder" in status.text, bad
    path.value = "run.json.gz"
    load._trigger_event(ButtonClick(load))
    assert "loaded run.json.gz" in status.text or status.text.endswith("ok</span>")
    assert "observed" in [c.name for c in doc.select_one({"name": "body"}).children]


def test_serve_refuses_a_bad_port_and_data_dir(capsys, tmp_path):
    assert viz(["serve", "--port", "99999"]) == 2
    assert "--port must lie in [1, 65535]" in capsys.readouterr().err
    assert viz(["serve", "--data-dir", str(tmp_path / "none")]) == 2
    assert "no such folder" in capsys.readouterr().err


def _serve(*extra: str):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "viz.cli", "serve", "--port", str(port), *extra], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "VIZ_MAX_UPLOAD_MB": "0.5"})
    line = proc.stdout.readline()
    assert f"http://localhost:{port}/" in line, line
    return f"http://localhost:{port}/", proc


def test_served_dashboard_is_trustworthy_in_a_browser(tmp_path):
    """In the browser: an error shown, then cleared by the next success; a cleared number box restored;
    an oversized upload refused; paths outside --data-dir refused, inside loaded; and when the tab is
    gone, the session's files are removed."""
    import glob
    require_browser()
    data = tmp_path / "data"
    data.mkdir()
    (data / "run.json.gz").write_bytes((OBS / "layers-proper.json.gz").read_bytes())
    url, proc = _serve("--data-dir", str(data))
    driver = open_browser()
    js = "Bokeh.documents[0].get_model_by_name"
    try:
        driver.get(url)
        wait_for(driver, BOKEH_READY, timeout=60, what="the dashboard")
        wait_for(driver, model_js("status", "m.text.includes('ok')"), timeout=60, what="the first prediction")
        driver.execute_script(f"{js}('tp').value = 3;")
        wait_for(driver, model_js("status", "m.text.includes('does not divide')"), timeout=60, what="the error")
        driver.execute_script(f"{js}('tp').value = 1;")
        wait_for(driver, model_js("status", "!m.text.includes('cannot') && m.text.includes('ok')"), timeout=60,
                 what="the error cleared")
        driver.execute_script(f"{js}('batch').value = null;")
        wait_for(driver, model_js("batch", "m.value === 4"), timeout=60, what="the cleared box restored")
        big = base64.b64encode(b"x" * 700_000).decode()
        driver.execute_script(f"{js}('upload').setv({{filename: 'big.json', value: arguments[0]}});", big)
        wait_for(driver, model_js("status", "m.text.includes('larger than')"), timeout=60, what="the upload cap")
        driver.execute_script(f"{js}('path').value = '../../../etc/passwd';")     # as if typed + Enter
        wait_for(driver, model_js("status", "m.text.includes('only files inside the data folder')"), timeout=60,
                 what="the path refused")
        assert "root:" not in driver.page_source
        driver.execute_script(f"{js}('path').value = 'run.json.gz';")
        wait_for(driver, model_js("status", "m.text.includes('loaded run.json.gz')"), timeout=90,
                 what="a trace inside the data folder loaded by path")
        up = base64.b64encode((OBS / "layers-proper.json.gz").read_bytes()).decode()
        driver.execute_script(f"{js}('upload').setv({{filename: 'layers.json.gz', value: arguments[0]}});", up)
        wait_for(driver, model_js("status", "m.text.includes('loaded layers.json.gz')"), timeout=90,
                 what="the upload loaded")
        assert glob.glob(f"{tempfile.gettempdir()}/viz-serve-{proc.pid}-*/layers.json.gz")
        assert js_errors(driver) == []
    finally:
        driver.quit()
    try:
        t0 = time.time()
        while glob.glob(f"{tempfile.gettempdir()}/viz-serve-{proc.pid}-*") and time.time() - t0 < 30:
            time.sleep(0.5)
        assert not glob.glob(f"{tempfile.gettempdir()}/viz-serve-{proc.pid}-*"), "session files left behind"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
