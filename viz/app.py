"""`viz serve`: a Bokeh server dashboard. Widgets for model, hardware, phase, batch, TP/DP/EP,
launch order and backend redraw the predicted timeline and its summary; an upload (or, with
--data-dir, a path inside that folder) loads an observed trace and shows the comparison. Bad input
shows a message in the page, the next success clears it, and the server keeps serving; number boxes
never hold an empty or out-of-range value; uploads are capped; each session's files are removed
when it ends."""
from __future__ import annotations

import base64
import html
import os
import shutil
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
from tracegen.stack import DEFAULT_STACK
from tracegen.trace import write_trace

from .report import build, summary_table
from .timeline import timeline_figure
from tracegen.base.backends import CPU_PROXY, IBGDA, NORMAL
from tracegen.target import Target

ERROR_STYLE = "color:#B00020;font-weight:bold"
MAX_UPLOAD_MB = float(os.environ.get("VIZ_MAX_UPLOAD_MB", 256))   # larger: `replay analyze`, or --data-dir
SESSION_IDLE_S = 5           # a closed tab's session (and its files) goes this long after the page is gone


@dataclass
class State:
    """What one browser session has loaded."""
    observed: Analysis | None = None
    observed_name: str = ""
    predicted: Analysis | None = None
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix=f"viz-serve-{os.getpid()}-")))


def predict(values: dict[str, Any], tmp: Path) -> Analysis:
    """A prediction for the widget values, as replay sees it (through the trace file)."""
    model, hw, preset = resolve_target(values["model"], hardware=values["hardware"], preset=values["preset"])
    plan = resolve_plan(values["phase"], model, hw, preset, batch=float(values["batch"]), tp=int(values["tp"]),
                        dp=int(values["dp"]), ep=int(values["ep"]), comm=values["comm"],
                        microbatches=1 if values["tbo"] == "off" else 2, stack=DEFAULT_STACK)
    sched = schedule(Target(model, hw, preset, plan),
                     TraceOptions(tbo=values["tbo"], layers=int(values["layers"]), ranks=int(values["ranks"])))
    path = tmp / "predicted.json"
    write_trace(sched, path, {"tbo": values["tbo"]})
    return analyze(path, use_cache=False, trace=load_trace(path, progress=False))


def inside(folder: Path, path: str) -> Path | None:
    """`path` resolved, if it lies inside `folder` (symbolic links and .. resolved first), else None."""
    try:
        p = (folder / path).resolve()
        p.relative_to(folder.resolve())
    except (ValueError, OSError):
        return None
    return p


def make_doc(doc: Document, observed: str | None = None, taxonomy: str | None = None,
             data_dir: str | None = None) -> None:
    """The dashboard on a Bokeh document (viz serve): widgets, callbacks, the first drawing."""
    Dashboard(doc, taxonomy, data_dir).start(observed)


class Dashboard:
    """One browser session: the plan widgets, the observed-trace inputs, and one method per callback."""

    def __init__(self, doc: Document, taxonomy: str | None, data_dir: str | None):
        self.doc, self.taxonomy, self.data_dir = doc, taxonomy, data_dir
        self.state = State()
        doc.on_session_destroyed(lambda ctx: shutil.rmtree(self.state.tmp, ignore_errors=True))
        self.w = self._plan_widgets()
        where = f"path under {data_dir} on the server" if data_dir else "paths: start with --data-dir; upload here"
        self.path_in = TextInput(title=f"observed trace ({where})", value="", name="path",
                                 sizing_mode="stretch_width", disabled=data_dir is None)
        self.load_btn = Button(label="load", button_type="primary", name="load")
        self.upload = FileInput(accept=".json,.gz", name="upload")
        self.status = Div(text="", name="status", sizing_mode="stretch_width")
        self.body = column(Div(text="computing..."), sizing_mode="stretch_width", name="body")

    @staticmethod
    def _plan_widgets() -> dict[str, Any]:
        models, hws = sorted(builtin_models()), sorted(builtin_hardware())
        return {
            "model": Select(title="model", value="deepseek-v3", options=models, name="model"),
            "hardware": Select(title="hardware", value="h800", options=hws, name="hardware"),
            "preset": Select(title="preset", value="default", options=list(PRESETS), name="preset"),
            "phase": Select(title="phase", value="prefill", options=["prefill", "decode"], name="phase"),
            "batch": Spinner(title="batch (sequences / DP group)", value=4, low=0.5, high=100_000, step=1,
                             name="batch"),
            "tp": Spinner(title="TP", value=1, low=1, high=64, step=1, name="tp"),
            "dp": Spinner(title="DP", value=32, low=1, high=1024, step=1, name="dp"),
            "ep": Spinner(title="EP (0: TP x DP)", value=0, low=0, high=1024, step=1, name="ep"),
            "tbo": Select(title="launch order", value="proper", options=["proper", "improper", "off"], name="tbo"),
            "comm": Select(title="backend", value=NORMAL, options=[NORMAL, IBGDA, CPU_PROXY], name="comm"),
            "layers": Spinner(title="layers", value=6, low=1, high=61, step=1, name="layers"),
            "ranks": Spinner(title="ranks", value=1, low=1, high=16, step=1, name="ranks"),
        }

    def say(self, msg: str, error: bool = False) -> None:
        self.status.text = f"<span style='{ERROR_STYLE if error else 'color:#333'}'>{html.escape(msg)}</span>"

    def guarded(self, what: str, fn: Callable[[], Analysis], hide: tuple[str, str] | None = None) -> Analysis | None:
        """fn's result; on failure a message in the page and None, and the server keeps serving. `hide`:
        (server path, name the user knows): the server's own paths never reach the page."""
        def clean(msg: str) -> str:
            return msg.replace(hide[0], hide[1]) if hide else msg
        try:
            return fn()
        except UserError as exc:
            self.say(clean(f"cannot {what}: {exc}"), error=True)
        except Exception as exc:     # noqa: BLE001 - keep serving, show what broke
            traceback.print_exc(file=sys.stderr)
            self.say(clean(f"cannot {what}: {type(exc).__name__}: {exc}"), error=True)
        return None

    def redraw(self, note: str = "ok") -> None:
        state = self.state
        values = {k: v.value for k, v in self.w.items()}
        predicted = self.guarded("predict", lambda: predict(values, state.tmp))
        if predicted is None:
            return
        state.predicted = predicted
        label = f"{values['model']} {values['phase']} on {values['hardware']} (TBO {values['tbo']})"
        if state.observed is not None:       # build() names the two sides itself (predicted / observed)
            layout = build([(label, state.predicted), (state.observed_name, state.observed)])
            self.body.children = list(layout.children)
        else:
            fig, _ = timeline_figure(state.predicted.events, f"predicted: {label}", findings=state.predicted.findings,
                                     flows=state.predicted.trace.flows, name="predicted")
            self.body.children = [summary_table([(label, state.predicted)]), fig]
        self.say(note)                    # a success replaces any earlier error

    def load_observed(self, path: str, name: str) -> None:
        observed = self.guarded(f"load {name}", lambda: analyze(path, taxonomy=self.taxonomy, use_cache=False),
                                (path, name))
        if observed is None:
            return
        self.state.observed, self.state.observed_name = observed, name
        hints = [x["message"] for x in observed.suspicious if x["what"] == "no_communication"]
        self.redraw(f"loaded {name}" + (f"; note: {hints[0]} (viz serve --taxonomy FILE applies one to every load)"
                                        if hints else ""))

    def on_path(self) -> None:
        p = self.path_in.value.strip()
        if not p:
            self.state.observed = None
            self.redraw()
            return
        if self.data_dir is None:
            self.say("cannot load a path: the server was started without --data-dir; upload the file instead",
                     error=True)
            return
        target = inside(Path(self.data_dir), p)
        if target is None:
            self.say(f"cannot load {p}: only files inside the data folder can be loaded", error=True)
            return
        if not target.is_file():
            self.say(f"cannot load {p}: no such file in the data folder", error=True)
            return
        self.load_observed(str(target), target.name)

    def on_upload(self, attr: str, old: Any, new: Any) -> None:
        if not new:
            return
        name = self.upload.filename or "upload.json"
        if len(new) * 3 / 4 > MAX_UPLOAD_MB * 1e6:
            self.say(f"cannot load {name}: larger than {MAX_UPLOAD_MB} MB; analyse it with `replay analyze`, or "
                     "start viz serve with --data-dir and load it by path", error=True)
            return
        try:
            raw = base64.b64decode(new, validate=True)
        except (ValueError, TypeError):
            self.say(f"cannot load {name}: the upload is not valid base64 data", error=True)
            return
        target = self.state.tmp / Path(name).name
        target.write_bytes(raw)
        self.load_observed(str(target), name)

    def on_hardware(self, attr: str, old: Any, new: Any) -> None:
        w = self.w
        hw = load_hardware(new)
        w["comm"].options = sorted(hw.comm)
        if w["comm"].value not in hw.comm:
            w["comm"].value = default_backend(load_preset(w["preset"].value), w["phase"].value, hw)

    def guard(self, widget: Any) -> Callable[[str, Any, Any], None]:
        """A number box cleared or pushed out of range goes back to its last value (with a word why)."""
        def on_change(attr: str, old: Any, new: Any) -> None:
            low, high = getattr(widget, "low", None), getattr(widget, "high", None)
            if isinstance(widget, Spinner) and (new is None or (low is not None and new < low)
                                                or (high is not None and new > high)):
                widget.value = old
                self.say(f"{widget.title}: needs a number in [{low:g}, {high:g}]; kept {old:g}", error=True)
                return
            self.redraw()
        return on_change

    def start(self, observed: str | None) -> None:
        """Wire the callbacks, lay the page out, and draw (the observed trace first, when given)."""
        for widget in self.w.values():
            widget.on_change("value", self.guard(widget))
        self.w["hardware"].on_change("value", self.on_hardware)
        self.load_btn.on_click(self.on_path)
        self.path_in.value = observed or ""
        self.path_in.on_change("value", lambda attr, old, new: self.on_path())      # Enter in the box loads too
        self.upload.on_change("value", self.on_upload)
        controls = column(*self.w.values(), width=230)
        obs_row = row(self.path_in, self.load_btn, self.upload, sizing_mode="stretch_width")
        self.doc.add_root(row(controls, column(Div(text="<h2>MoE layer timeline: predicted vs observed</h2>"),
                                               obs_row, self.status, self.body, sizing_mode="stretch_width"),
                              sizing_mode="stretch_width", name="root"))
        self.doc.title = "moe-timeline"
        if observed:
            self.load_observed(observed, Path(observed).name)
        else:
            self.redraw()

def serve(port: int = 5006, host: str = "localhost", observed: str | None = None, taxonomy: str | None = None,
          show: bool = False, data_dir: str | None = None) -> int:
    from bokeh.application import Application
    from bokeh.application.handlers.function import FunctionHandler
    from bokeh.server.server import Server
    if not 0 < port < 65536:
        raise UserError(f"--port must lie in [1, 65535], got {port}")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise UserError(f"--data-dir {data_dir}: no such folder")
    from .deployment import make_deploy_doc
    app = Application(FunctionHandler(lambda doc: make_doc(doc, observed, taxonomy, data_dir)))
    deploy_app = Application(FunctionHandler(make_deploy_doc))
    origins = [f"{h}:{port}" for h in {host, "localhost", "127.0.0.1"}]
    try:
        server = Server({"/": app, "/deploy": deploy_app}, port=port, address=host, allow_websocket_origin=origins,
                        websocket_max_message_size=int(MAX_UPLOAD_MB * 1e6 * 4 / 3) + (1 << 20),   # base64
                        unused_session_lifetime_milliseconds=SESSION_IDLE_S * 1000,
                        check_unused_sessions_milliseconds=1000)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port") from None
    server.start()
    url = f"http://{host}:{port}/"
    print(f"viz: serving the dashboard at {url} and the deployment page at {url}deploy (Ctrl-C stops)", flush=True)
    if show:
        server.io_loop.add_callback(server.show, "/")
    try:
        server.io_loop.start()
    except KeyboardInterrupt:
        pass
    return 0
