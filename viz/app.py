"""`viz serve`: a Bokeh server dashboard. Widgets for model, hardware, phase, batch, TP/DP/EP,
launch order and backend redraw the predicted timeline and its summary; a path field or an upload
loads an observed trace and shows the comparison. Bad input shows a message in the page and the
server keeps serving."""
from __future__ import annotations

import base64
import html
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bokeh.document import Document
from bokeh.layouts import column, row
from bokeh.models import Button, Div, FileInput, Select, Spinner, TextInput

from replay.analyze import Analysis, analyze
from replay.events import load as load_trace
from tracegen.base.errors import UserError
from tracegen.catalog import builtin_hardware, builtin_models, load_hardware
from tracegen.pipeline import TraceOptions, schedule
from tracegen.preset import PRESETS, load_preset
from tracegen.resolve import default_backend, resolve_plan, resolve_target
from tracegen.trace import write_trace

from .report import build, summary_table
from .timeline import timeline_figure

ERROR_STYLE = "color:#B00020;font-weight:bold"


@dataclass
class State:
    """What one browser session has loaded."""
    observed: Analysis | None = None
    observed_name: str = ""
    predicted: Analysis | None = None
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="viz-serve-")))


def predict(values: dict[str, Any], tmp: Path) -> Analysis:
    """A prediction for the widget values, as replay sees it (through the trace file)."""
    model, hw, preset = resolve_target(values["model"], hardware=values["hardware"], preset=values["preset"])
    plan = resolve_plan(values["phase"], model, hw, preset, batch=float(values["batch"]), tp=int(values["tp"]),
                        dp=int(values["dp"]), ep=int(values["ep"]), comm=values["comm"],
                        microbatches=1 if values["tbo"] == "off" else 2)
    sched = schedule(model, hw, plan, preset, TraceOptions(tbo=values["tbo"], layers=int(values["layers"]),
                                                           ranks=int(values["ranks"])))
    path = tmp / "predicted.json"
    write_trace(sched, path, {"tbo": values["tbo"]})
    return analyze(path, use_cache=False, trace=load_trace(path, progress=False))


def make_doc(doc: Document, observed: str | None = None, taxonomy: str | None = None) -> None:
    state = State()
    models, hws = sorted(builtin_models()), sorted(builtin_hardware())
    w = {
        "model": Select(title="model", value="deepseek-v3", options=models, name="model"),
        "hardware": Select(title="hardware", value="h800", options=hws, name="hardware"),
        "preset": Select(title="preset", value="default", options=list(PRESETS), name="preset"),
        "phase": Select(title="phase", value="prefill", options=["prefill", "decode"], name="phase"),
        "batch": Spinner(title="batch (sequences / DP group)", value=4, low=0.5, step=1, name="batch"),
        "tp": Spinner(title="TP", value=1, low=1, step=1, name="tp"),
        "dp": Spinner(title="DP", value=32, low=1, step=1, name="dp"),
        "ep": Spinner(title="EP (0: TP x DP)", value=0, low=0, step=1, name="ep"),
        "tbo": Select(title="launch order", value="proper", options=["proper", "improper", "off"], name="tbo"),
        "comm": Select(title="backend", value="normal", options=["normal", "ibgda", "cpu-proxy"], name="comm"),
        "layers": Spinner(title="layers", value=6, low=1, high=61, step=1, name="layers"),
        "ranks": Spinner(title="ranks", value=1, low=1, high=16, step=1, name="ranks"),
    }
    path_in = TextInput(title="observed trace (path on the server)", value=observed or "", name="path",
                        sizing_mode="stretch_width")
    load_btn = Button(label="load", button_type="primary", name="load")
    upload = FileInput(accept=".json,.gz", name="upload")
    status = Div(text="", name="status", sizing_mode="stretch_width")
    body = column(Div(text="computing..."), sizing_mode="stretch_width", name="body")

    def say(msg: str, error: bool = False) -> None:
        status.text = f"<span style='{ERROR_STYLE if error else 'color:#333'}'>{html.escape(msg)}</span>"

    def guarded(what: str, fn: Callable[[], Analysis]) -> Analysis | None:
        """fn's result; on failure a message in the page and None, and the server keeps serving."""
        try:
            return fn()
        except UserError as exc:
            say(f"cannot {what}: {exc}", error=True)
        except Exception as exc:     # noqa: BLE001 - keep serving, show what broke
            traceback.print_exc(file=sys.stderr)
            say(f"cannot {what}: {type(exc).__name__}: {exc}", error=True)
        return None

    def redraw() -> None:
        values = {k: v.value for k, v in w.items()}
        predicted = guarded("predict", lambda: predict(values, state.tmp))
        if predicted is None:
            return
        state.predicted = predicted
        label = f"predicted: {values['model']} {values['phase']} on {values['hardware']} (TBO {values['tbo']})"
        if state.observed is not None:
            layout = build([(label, state.predicted), (state.observed_name, state.observed)])
            body.children = list(layout.children)
        else:
            fig, _ = timeline_figure(state.predicted.events, label, findings=state.predicted.findings,
                                     flows=state.predicted.trace.flows, name="predicted")
            body.children = [summary_table([(label, state.predicted)]), fig]
        if "cannot" not in status.text:
            say("ok")

    def load_observed(path: str, name: str) -> None:
        observed = guarded(f"load {name}", lambda: analyze(path, taxonomy=taxonomy, use_cache=False))
        if observed is None:
            return
        state.observed, state.observed_name = observed, name
        say(f"loaded {name}")
        redraw()

    def on_path() -> None:
        p = path_in.value.strip()
        if not p:
            state.observed = None
            redraw()
            return
        if not Path(p).exists():
            say(f"cannot load {p}: no such file", error=True)
            return
        load_observed(p, Path(p).name)

    def on_upload(attr: str, old: Any, new: Any) -> None:
        if not new:
            return
        name = upload.filename or "upload.json"
        try:
            raw = base64.b64decode(new, validate=True)
        except (ValueError, TypeError):
            say(f"cannot load {name}: the upload is not valid base64 data", error=True)
            return
        target = state.tmp / Path(name).name
        target.write_bytes(raw)
        load_observed(str(target), name)

    def on_hardware(attr: str, old: Any, new: Any) -> None:
        hw = load_hardware(new)
        w["comm"].options = sorted(hw.comm)
        if w["comm"].value not in hw.comm:
            w["comm"].value = default_backend(load_preset(w["preset"].value), w["phase"].value, hw)

    for widget in w.values():
        widget.on_change("value", lambda attr, old, new: redraw())
    w["hardware"].on_change("value", on_hardware)
    load_btn.on_click(on_path)
    upload.on_change("value", on_upload)
    controls = column(*w.values(), width=230)
    obs_row = row(path_in, load_btn, upload, sizing_mode="stretch_width")
    doc.add_root(row(controls, column(Div(text="<h2>MoE layer timeline: predicted vs observed</h2>"), obs_row,
                                      status, body, sizing_mode="stretch_width"), sizing_mode="stretch_width",
                     name="root"))
    doc.title = "moe-timeline"
    if observed:
        load_observed(observed, Path(observed).name)
    else:
        redraw()


def serve(port: int = 5006, host: str = "localhost", observed: str | None = None, taxonomy: str | None = None,
          show: bool = False) -> int:
    from bokeh.application import Application
    from bokeh.application.handlers.function import FunctionHandler
    from bokeh.server.server import Server
    app = Application(FunctionHandler(lambda doc: make_doc(doc, observed, taxonomy)))
    origins = [f"{h}:{port}" for h in {host, "localhost", "127.0.0.1"}]
    try:
        server = Server({"/": app}, port=port, address=host, allow_websocket_origin=origins)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port") from None
    server.start()
    url = f"http://{host}:{port}/"
    print(f"viz: serving the dashboard at {url} (Ctrl-C stops)", flush=True)
    if show:
        server.io_loop.add_callback(server.show, "/")
    try:
        server.io_loop.start()
    except KeyboardInterrupt:
        pass
    return 0
