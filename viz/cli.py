"""`viz`: Bokeh views of predicted and observed timelines - a self-contained HTML report, or a
dashboard served on localhost with what-if controls."""
from __future__ import annotations

import argparse
from pathlib import Path

from tracegen.base.cliutil import add_command, command, add_reading_args, entry_point, new_parser
from tracegen.base.errors import UserError

EPILOG_HTML = """\
examples:
  viz html trace.json.gz -o report.html                  one trace: timeline, overlap table, idle marks
  viz html predicted.json.gz observed.json -o cmp.html   predicted above observed, linked zoom
  viz html pred.json.gz traces/observed/h100/layers-proper.json.gz \\
      --taxonomy traces/observed/h100/taxonomy.toml --align-layer 4 -o h100.html

The file is self-contained (Bokeh's JavaScript is inlined): it opens offline. Zoom with the wheel;
large traces show merged intervals until you zoom in (see README: large traces)."""

EPILOG_DEPLOY = """\
examples:
  viz deploy -o deploy.html                                  the default PD deployment at capacity
  viz deploy --rate 40 --requests 5000 --slo-ttft 1000 --slo-tpot 50 -o load.html
  viz deploy --mode colocated --prefill-nodes 6 --rate 25 -o colocated.html

The flags are tracegen deploy's (see tracegen deploy --help). The dashboard has the same view with
widgets: viz serve, then /deploy."""

EPILOG_SERVE = """\
examples:
  viz serve                        http://localhost:5006/ (prints the URL)
  viz serve --port 8080 --observed traces/observed/h100/layers-proper.json.gz"""


def cmd_html(args: argparse.Namespace) -> int:
    from replay.analyze import analyze
    from replay.cli import check_traces, warn_skipped

    from .report import build, write_html
    if not args.output.endswith((".html", ".htm")):
        raise UserError(f"-o {args.output}: name the report *.html")
    if args.align_layer is not None and len(args.traces) == 1:
        raise UserError("--align-layer lines up two traces; give PREDICTED OBSERVED")
    check_traces(*args.traces)          # a folder's left-out files named on stderr, as replay does
    analyses = []
    for path, label in zip(args.traces, labels(args.traces)):
        a = analyze(path, taxonomy=args.taxonomy, rank=args.rank, use_cache=not args.no_cache,
                    strict=args.strict)
        warn_skipped(a)
        analyses.append((label, a))
    layout = build(analyses, show_cpu=args.cpu, align_layer=args.align_layer, layer_offset=args.layer_offset,
                   stages_file=args.stages, ranks_spec=args.timeline_ranks)
    out = write_html(layout, args.output, " vs ".join(label for label, _ in analyses))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): open it in a browser")
    return 0


def labels(paths: list[str]) -> list[str]:
    """Names that tell the traces apart: the file names, or as many trailing path parts as it takes
    (r1/rank0.json vs r2/rank0.json), or numbered when even the paths are the same."""
    parts = [Path(p).resolve().parts for p in paths]
    for n in range(1, max(len(x) for x in parts) + 1):
        names = ["/".join(x[-n:]) for x in parts]
        if len(set(names)) == len(names):
            return names
    return [f"{i + 1}: {Path(p).name}" for i, p in enumerate(paths)]


def cmd_deploy(args: argparse.Namespace) -> int:
    from tracegen.serving.cli import simulate_args

    from .deployment import deployment_layout
    from .report import write_html
    if not args.output.endswith((".html", ".htm")):
        raise UserError(f"-o {args.output}: name the report *.html")
    r, s = simulate_args(args)
    out = write_html(deployment_layout(r, s), args.output, s["plan"])
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): {s['plan']}; open it in a browser")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .app import serve
    if args.observed and not Path(args.observed).exists():
        raise UserError(f"{args.observed}: no such file")
    return serve(port=args.port, host=args.host, observed=args.observed, taxonomy=args.taxonomy,
                 show=args.show, data_dir=args.data_dir)


def build_parser() -> argparse.ArgumentParser:
    p, sub = new_parser("viz", __doc__)
    h = add_command(sub, "html", cmd_html,
                    help="write a self-contained HTML report of one or two traces",
                    epilog=EPILOG_HTML,
                    description="One trace: its timeline with the overlap table and idle findings. Two traces "
                                "(predicted, observed): both timelines on one linked time axis, aligned at a "
                                "layer, the per-layer breakdown and the per-stage error chart.")
    h.add_argument("traces", nargs="+", metavar="TRACE", help="one trace, or PREDICTED OBSERVED")
    h.add_argument("-o", "--output", required=True, help="HTML file to write")
    h.add_argument("--cpu", action="store_true", help="show the CPU threads too")
    h.add_argument("--rank", type=int, default=None, help="one rank only")
    h.add_argument("--timeline-ranks", metavar="RANKS", default=None,
                   help="ranks the timeline draws, e.g. 0-7,12 (default: all up to 16 ranks; beyond, the stragglers "
                        "and the ranks that waited most, 8 in all); the heatmaps and the straggler list keep every rank")
    h.add_argument("--align-layer", type=int, default=None, help="line both timelines up at this layer's start")
    h.add_argument("--layer-offset", type=int, default=0, help="add to the observed trace's layer numbers")
    add_reading_args(h, json_help=argparse.SUPPRESS, stages=True)
    from tracegen.serving.cli import add_deploy_args
    d = add_command(sub, "deploy", cmd_deploy, help="simulate a deployment and draw it (HTML)",
                    epilog=EPILOG_DEPLOY,
                    description="Run `tracegen deploy`'s simulation for the same flags and write the decode "
                                "latency-throughput curve, the TTFT / TPOT distributions and pool utilisation "
                                "over time as one self-contained HTML page.")
    d.add_argument("-o", "--output", required=True, help="HTML file to write")
    add_deploy_args(d)
    s = add_command(sub, "serve", cmd_serve,
                    help="dashboard on localhost: predicted timeline with what-if widgets",
                    epilog=EPILOG_SERVE,
                    description="A Bokeh server app: pick model, hardware, phase, batch, TP/DP/EP, launch order "
                                "and backend and the predicted timeline redraws; load an observed trace by path "
                                "or upload to compare.")
    s.add_argument("--port", type=int, default=5006, help="port to listen on (as bokeh serve)")
    s.add_argument("--host", default="localhost", help="address to bind (default: this machine only)")
    s.add_argument("--observed", default=None, metavar="TRACE", help="an observed trace to load at start")
    s.add_argument("--taxonomy", metavar="FILE", default=None, help="extra kernel-classification rules")
    s.add_argument("--show", action="store_true", help="open a browser tab")
    s.add_argument("--data-dir", default=None, metavar="FOLDER",
                   help="let the page load traces by path from this folder (default: uploads only; never "
                        "serve a folder you would not publish when --host is not localhost)")
    return p


def _check(args: argparse.Namespace) -> None:
    if args.cmd == "html" and len(args.traces) > 2:
        raise UserError("viz html takes one trace, or PREDICTED OBSERVED")


main = entry_point("viz", build_parser, _check)
console = command(main)          # the `viz` command (pyproject's console script)


if __name__ == "__main__":
    console()
