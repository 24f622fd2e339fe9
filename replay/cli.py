"""`replay`: measure computation/communication overlap in real (or generated) traces, compare a
prediction with them, re-time them under a change, and fit the cost model to them."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tracegen.base.backends import CPU_PROXY, IBGDA, NORMAL, PCIE_COPY
from tracegen.base.cliutil import add_command, command, add_reading_args, entry_point, finite, new_parser, print_json
from tracegen.base.errors import UserError


def tag(name: str) -> str:
    """The schema tag of an output document (schemas imported on use: --help stays light)."""
    from tracegen.schemas import tag as schema_tag

    from .schemas import SCHEMAS
    return schema_tag(name, SCHEMAS)


EPILOG = """\
examples:
  replay analyze prefill.json                     DeepSeek's public profile (PyTorch profiler JSON)
  replay analyze traces/ --rank 3                 a folder of per-rank files, one rank shown
  replay analyze train.json --json > out.json     everything as one JSON object
  replay analyze decode.json.gz --window 0:20ms --csv layers.csv
  replay analyze my.json --taxonomy my_kernels.toml   classify your own kernels

Communication is recognised by kernel name (DeepEP normal/low-latency dispatch, combine and
notify - both deep_ep:: and DeepSeek's dpsk::ep:: spelling - NCCL collectives, other all-to-alls);
see replay/data/taxonomy.toml. Layers come from tracegen's args, from annotations such as
attn(F) / dispatch(B), or from the repeating dispatch/combine sequence."""


EPILOG_SQL = """\
examples:
  replay sql traces/observed/deepep-h100x4/prefill-late "SELECT rank, peer_wait_us FROM ranks"
  # the slowest DeepEP dispatch kernel per layer across ranks, and on which rank
  replay sql RUN/ "SELECT layer, max(dur_us) AS slowest_us, arg_max(rank, dur_us) AS rank FROM kernels
                   WHERE subclass = 'deepep_dispatch' GROUP BY layer ORDER BY slowest_us DESC"
  # ranks whose expert compute exceeds the median by 20 %
  replay sql RUN/ "WITH m AS (SELECT rank, sum(dur_us) AS mlp_us FROM kernels
                   WHERE stage LIKE 'MLP%' AND klass = 'compute' GROUP BY rank)
                   SELECT rank, mlp_us FROM m WHERE mlp_us > 1.2 * (SELECT median(mlp_us) FROM m)"
  replay sql trace.json.gz --views                  the views and their columns"""

EPILOG_COMPARE = """\
examples:
  tracegen trace --hardware h100 --comm pcie-copy --batch 2 --seq-len 4096 --dp 32 --routing spread --skip-dense \\
      --layers 4 -o pred.json.gz
  replay compare pred.json.gz traces/observed/h100/layers-proper.json.gz \\
      --taxonomy traces/observed/h100/taxonomy.toml --layer-offset 0"""


EPILOG_WHATIF = """\
examples:
  replay whatif improper.json.gz --launch-order proper -o fixed.json.gz
  replay whatif prefill.json.gz --comm-scale 2 -o slow-network.json.gz      half the link bandwidth
  replay whatif decode.json.gz --comm ibgda -o ibgda.json.gz
  replay whatif traces/observed/h100/layers-improper.json.gz --launch-order proper \\
      --taxonomy traces/observed/h100/taxonomy.toml -o h100-fixed.json.gz"""


EPILOG_CALIBRATE = """\
examples:
  replay calibrate traces/observed/h100/sweep.json.gz --hardware h100-datasheet -o h100-fit.json \\
      --holdout-m 3,24,96,384,1536,6144,48,768 --holdout-name shared_up,shared_down
  tracegen trace --hardware-file h100-fit.json ...        predict with the fitted curves
  replay calibrate pred.json.gz -o fit.json               a tracegen trace: recovers its own curves

Profiler ranges are named "op=<gemm|grouped_gemm|attention|hbm|pcie> name=<op> M=.. N=.. K=..
flops=.. bytes=.. dtype=<fp8|bf16>" (bench/capture/capture_h100.py writes them). The fit itself
is tracegen/fit.py; its prediction for each op is tracegen's cost.op_time."""


STEP_HELP = "one profiler step of the observed trace (default: the last, when it has several)"

from .stepnames import DEFAULT_STEP  # noqa: E402  (a constant for --help; stepnames.py imports nothing heavy)


def warn_skipped(*analyses: Any) -> None:
    """One stderr line per rank file a folder's analysis left out (unreadable, or no GPU work)."""
    for a in analyses:
        for bad in a.trace.meta.get("skipped_files", []):
            print(f"warning: {bad['file']}: {bad['error']}: left out, the other ranks analysed"
                  + ("" if bad.get("cpu_only") else " (--strict makes this an error)"), file=sys.stderr)


WHOLE_TABLE_MAX_BYTES = 1 << 30    # a folder up to this size, on one process, is analysed as one table
AUTO_JOBS_MIN_BYTES = 64 << 20      # from this size a folder's rank files are parsed one process per core


def _auto_jobs(path: str) -> int:
    """--jobs left unset: one process per core (at most one per rank file) for a folder of rank files
    of AUTO_JOBS_MIN_BYTES or more, where parsing dominates; else 1 (process start-up would dominate)."""
    from pathlib import Path

    from .kineto import trace_files
    from .parallel import MAX_JOBS
    p = Path(path)
    if not p.is_dir():
        return 1
    files = trace_files(p)
    if len(files) < 2 or sum(f.stat().st_size for f in files) < AUTO_JOBS_MIN_BYTES:
        return 1
    return max(1, min(_cores(), len(files), MAX_JOBS))


def _cores() -> int:
    import os
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _in_stages(path: str, jobs: int, cluster: str | None) -> bool:
    """Whether a folder of rank files is analysed in two stages (replay/folder.py): with --jobs or
    --cluster, or past WHOLE_TABLE_MAX_BYTES of trace files (memory bounded by the ranks in flight).
    A smaller folder on one process is analysed as one table, which is faster for many small
    ranks; both give the same JSON (tests/test_folder_stages.py)."""
    from pathlib import Path

    from .kineto import trace_files
    p = Path(path)
    if not p.is_dir():
        return False
    files = trace_files(p)
    return len(files) > 1 and (jobs > 1 or bool(cluster) or sum(f.stat().st_size for f in files) > WHOLE_TABLE_MAX_BYTES)


def check_traces(*paths: str) -> None:
    """A trace path that is not there (or an empty folder) is refused before the analysis modules
    (pandas among them) load: the one-line error comes at once; a file a folder's listing leaves
    out is named on stderr."""
    from .kineto import folder_files, trace_files
    for path in map(Path, paths):
        if not path.is_dir():
            trace_files(path)               # a file that is not there is refused here
            continue
        for note in folder_files(path)[1]:  # the folder listed once: its rank files, and what it leaves out
            print(f"warning: {note}", file=sys.stderr)


def _analyze(args: argparse.Namespace, staged: bool, early: Any) -> Any:
    """The Analysis `replay analyze` prints: a folder in two stages, or one table."""
    from .analyze import analyze, parse_window
    from .report import findings_format
    if args.findings:
        findings_format(args.findings)          # refused before the analysis, not after
    window = parse_window(args.window) if args.window else None
    if staged:
        # two stages, one rank file at a time (per --jobs process or cluster worker): memory bounded
        # by the ranks in flight, the same JSON as the whole-table analysis (replay/folder.py)
        from .folder import Options, analyze_folder
        return analyze_folder(args.trace, Options(args.taxonomy, microbatches=args.microbatches,
                                                  step_regex=args.step_regex, step=args.step,
                                                  min_lost_us=args.min_lost_us, window=window, rank=args.rank,
                                                  use_cache=not args.no_cache, allow_mixed=args.allow_mixed),
                              strict=args.strict, jobs=args.jobs, cluster=args.cluster, early=early)
    return analyze(args.trace, taxonomy=args.taxonomy, rank=args.rank, window=window, use_cache=not args.no_cache,
                   microbatches=args.microbatches, min_lost_us=args.min_lost_us, step_regex=args.step_regex,
                   step=args.step, strict=args.strict, jobs=args.jobs, cluster=args.cluster,
                   allow_mixed=args.allow_mixed)


def cmd_analyze(args: argparse.Namespace) -> int:
    check_traces(args.trace)
    from .parallel import MAX_JOBS
    if args.jobs is None:
        args.jobs = 1 if args.cluster else _auto_jobs(args.trace)
    if not 1 <= args.jobs <= MAX_JOBS:
        raise UserError(f"--jobs must lie in [1, {MAX_JOBS}], got {args.jobs}")
    staged = _in_stages(args.trace, args.jobs, args.cluster)
    early = None
    if staged and args.jobs > 1 and not args.cluster:
        # the folder's last files parsed on an idle core while the analysis modules import (headstart.py)
        from . import headstart
        from .kineto import trace_files
        early = headstart.start([str(f) for f in trace_files(Path(args.trace))], _cores())
    try:
        a = _analyze(args, staged, early)
    finally:
        if early is not None:
            early.end()
    from .analysis import FINDINGS_PER_KIND
    from .report import render, write_findings, write_layers
    warn_skipped(a)
    if args.csv:
        write_layers(a, args.csv, "csv")
    if args.parquet:
        write_layers(a, args.parquet, "parquet")
    if args.findings:
        write_findings(a, args.findings)
    if args.json:
        print_json(a.to_dict(max_findings=args.max_findings, per_kind=None if args.all_findings else FINDINGS_PER_KIND),
                   tag("replay-analyze"))
    else:
        print(render(a, top=args.top))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from tracegen.base.fileio import atomic_write

    from .analyze import analyze, analyze_one_step
    from .compare import compare, render, to_json
    from .stagerules import load_stage_rules
    rank_map = {}
    for item in (args.rank_map or "").split(","):
        if item.strip():
            try:
                o, p = (int(x) for x in item.split(":"))
            except ValueError:
                raise UserError(f"--rank-map takes OBS:PRED pairs like 0:0,1:1, got {item!r}") from None
            rank_map[o] = p
    rules = load_stage_rules(args.stages)
    check_traces(args.predicted, args.observed)
    pred = analyze(args.predicted, taxonomy=args.taxonomy, use_cache=not args.no_cache, strict=args.strict)
    obs, note = analyze_one_step(args.observed, args.step, taxonomy=args.taxonomy, use_cache=not args.no_cache,
                                 strict=args.strict)
    warn_skipped(pred, obs)
    if note:
        print(f"observed: {note}", file=sys.stderr)
    result = compare(pred, obs, rules, rank_map, args.layer_offset, args.top, args.taxonomy)
    if args.csv:
        atomic_write(args.csv, result["stages"].to_csv(index=False))
    if args.json:
        print_json(to_json(result, args.predicted, args.observed), tag("replay-compare"))
    else:
        print(render(result, args.predicted, args.observed))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    check_traces(args.before, args.after)
    from tracegen.base.fileio import atomic_write

    from .analyze import analyze
    from .stagerules import load_stage_rules
    from .diff import diff, figure, render
    if args.fail_if_slower is not None and not args.fail_if_slower >= 0:
        raise UserError(f"--fail-if-slower is a percentage >= 0, got {args.fail_if_slower}")
    kw = dict(taxonomy=args.taxonomy, use_cache=not args.no_cache, strict=args.strict)
    before, after = analyze(args.before, **kw), analyze(args.after, **kw)
    warn_skipped(before, after)
    d = diff(before, after, load_stage_rules(args.stages), args.fail_if_slower)
    if args.html:
        from bokeh.embed import file_html
        from bokeh.resources import INLINE
        atomic_write(args.html, file_html(figure(d, Path(args.before).name, Path(args.after).name), INLINE,
                                          "replay diff"))
    if args.json:
        print_json(d, tag("replay-diff"))
    else:
        print(render(d, args.before, args.after))
    return 1 if d["failed"] else 0


def cmd_merge(args: argparse.Namespace) -> int:
    from .analyze import analyze
    from .merge import merge
    check_traces(args.folder)
    a = analyze(args.folder, taxonomy=args.taxonomy, use_cache=not args.no_cache, strict=args.strict,
                allow_mixed=args.allow_mixed)
    res = merge(args.folder, args.output, a.peers.offsets_us)
    res["clock"] = a.peers.clock
    if args.json:
        print_json(res)
        return 0
    print(f"wrote {res['output']}: {len(res['ranks'])} ranks, {res['events']:,} events, one timeline "
          f"({res['clock']}); open it in https://ui.perfetto.dev")
    for r in res["ranks"]:
        if r["offset_us"]:
            print(f"  rank {r['rank']} ({r['file']}) moved by {-r['offset_us'] / 1e3:+.3f} ms")
    return 0


def cmd_whatif(args: argparse.Namespace) -> int:
    from .analyze import analyze_one_step
    from .stagerules import load_stage_rules
    from .whatif import Change, whatif_trace
    for name in ("comm_scale", "compute_scale"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    from tracegen.trace import output_format
    output_format(args.output)
    check_traces(args.observed)
    a, note = analyze_one_step(args.observed, args.step, taxonomy=args.taxonomy, rank=args.rank,
                               use_cache=not args.no_cache, strict=args.strict, findings=False)
    warn_skipped(a)
    change = Change(args.launch_order, args.comm_scale, args.compute_scale, args.comm)
    res = whatif_trace(args.observed, args.output, a, load_stage_rules(args.stages), change, args.hardware)
    if note:                        # after the run: a refusal stays one line
        print(f"observed: {note}", file=sys.stderr)
    if args.json:
        print_json(res, tag("replay-whatif"))
        return 0
    print(f"wrote {res['output']}: {Path(args.observed).name} re-timed with "
          + (", ".join(f"{k}={v}" for k, v in res["changes"].items()) or "no change"))
    print("assumed: " + "\n         ".join(res["assumptions"]))
    print(f"  {'rank':>4}{'span ms':>12}{'observed':>10}{'no change':>11}{'replay err':>12}{'overlap ms':>12}"
          f"{'observed':>10}{'hidden':>8}")
    worst = 0.0
    for r in res["ranks"]:
        obs_span = r["observed_span_us"] / 1e3 if r["observed_span_us"] is not None else float("nan")
        obs_ov = r["observed_overlap_us"] / 1e3 if r["observed_overlap_us"] is not None else float("nan")
        err = r["no_change_error_pct"] if r["no_change_error_pct"] is not None else float("nan")
        worst = max(worst, abs(err)) if err == err else worst
        print(f"  {r['rank']:>4}{r['span_us'] / 1e3:>12.3f}{obs_span:>10.3f}{r['no_change_span_us'] / 1e3:>11.3f}"
              f"{err:>+11.1f}%{r['overlap_us'] / 1e3:>12.3f}{obs_ov:>10.3f}{r['hidden_comm_pct']:>7.1f}%")
    print("replay err: the trace re-timed with no change against the trace itself; the what-if carries it"
          + (f" (up to {worst:.1f} % here: read the change's effect against 'no change', not 'observed')"
             if worst > 2.0 else ""))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    import json

    from tracegen.base.fileio import atomic_write
    from tracegen.catalog import hardware_to_dict

    from .calibrate import calibrate_files

    def floats(text: str | None) -> set[float]:
        try:
            return {float(x) for x in text.split(",") if x.strip()} if text else set()
        except ValueError:
            raise UserError(f"--holdout-m takes numbers separated by commas, got {text!r}") from None

    if not args.output.endswith(".json"):
        raise UserError(f"-o {args.output}: calibrate writes a JSON hardware file (name it *.json)")
    hw, table, detail, sources = calibrate_files(args.observed, args.hardware, args.hardware_file, floats(args.holdout_m),
                                     {x.strip() for x in (args.holdout_name or "").split(",") if x.strip()})
    atomic_write(args.output, json.dumps(hardware_to_dict(hw), indent=1))
    if args.report:
        atomic_write(args.report, detail.to_csv(index=False))
    if args.json:
        print_json({"output": args.output, "sources": sources, "hardware": hardware_to_dict(hw),
                    "errors": table.to_dict(orient="records")}, tag("replay-calibrate"))
        return 0
    for s in sources:
        print(s)
    print(f"\nfitted efficiency curves for {hw.name} (eff = max * g(M) * f(N) * f(K); floor per kernel):")
    w = max(len(k) for k in hw.efficiency) + 1
    for kind, c in hw.efficiency.items():
        print(f"  {kind:<{w}} max {c.max:.3f}  m_half {c.m_half:8.1f} (pow {c.m_pow:g})  n_half {c.n_half:8.1f}  "
              f"k_half {c.k_half:8.1f}  floor {c.floor_us:.2f} us")
    if PCIE_COPY in hw.comm:
        print(f"  pcie-copy link efficiency {hw.comm[PCIE_COPY].bw_eff:.3f} of {hw.pcie_gbps:g} GB/s")
    print("\nprediction error per op kind (|predicted - observed| / observed):")
    w = max([len("kind")] + [len(str(k)) for k in table["kind"]]) + 2
    print(f"  {'kind':<{w}}{'set':<10}{'n':>5}{'median before':>15}{'after':>8}{'p90 before':>12}{'after':>8}")
    before, after = table[table["model"] == "before"], table[table["model"] == "after"]
    for (_, b), (_, a) in zip(before.iterrows(), after.iterrows()):
        note = ("  (decode attention here is a stand-in kernel, e.g. the H100 sweep's plain einsum, not FlashMLA: "
                "its error says nothing of the curve)" if a["kind"] == "attention_decode"
                and a["median_abs_err_pct"] > 30 else "")
        print(f"  {a['kind']:<{w}}{a['set']:<10}{int(a['n']):>5}{b['median_abs_err_pct']:>14.1f}%"
              f"{a['median_abs_err_pct']:>7.1f}%{b['p90_abs_err_pct']:>11.1f}%{a['p90_abs_err_pct']:>7.1f}%{note}")
    print(f"\nwrote {args.output}: use it with --hardware-file {args.output}")
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    from tracegen.base.fileio import atomic_write

    from .analyze import analyze
    from .sql import describe, query
    check_traces(args.trace)
    a = analyze(args.trace, taxonomy=args.taxonomy, use_cache=not args.no_cache, step_regex=args.step_regex,
                strict=args.strict)
    warn_skipped(a)
    if args.views:
        print(describe(a))
        return 0
    if not args.query:
        raise UserError("give a query, e.g. replay sql TRACE \"SELECT * FROM ranks\" (--views lists the views)")
    df = query(a, args.query)
    if args.csv:
        atomic_write(args.csv, df.to_csv(index=False))
    if args.json:
        print_json({"columns": list(df.columns), "rows": json.loads(df.to_json(orient="values"))}, tag("replay-sql"))
    elif not args.csv:
        shown = df.head(args.max_rows)
        print(shown.to_string(index=False, na_rep="-") if len(df) else "(no rows)")     # an empty sum is no number
        if len(df) > len(shown):
            print(f"... {len(df) - len(shown):,} more rows (--max-rows, or --csv FILE for all)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p, sub = new_parser("replay", __doc__)
    _add_analyze(sub)
    _add_diff(sub)
    _add_merge(sub)
    _add_compare(sub)
    _add_whatif(sub)
    _add_sql(sub)
    _add_calibrate(sub)
    return p


def _add_analyze(sub: argparse._SubParsersAction) -> None:
    a = add_command(sub, "analyze", cmd_analyze,
                    help="overlap, exposed communication and idle causes of a trace",
                    epilog=EPILOG,
                    description="Load a PyTorch-profiler (Kineto) / Chrome trace - .json, .json.gz or a folder "
                                "of per-rank files - and measure, per rank, layer and micro-batch, how much "
                                "communication computation hides, and why the GPU idles.")
    a.add_argument("trace", help="trace file (.json / .json.gz) or folder of per-rank traces")
    add_reading_args(a, json_help="print one JSON object (ranks, layers, findings)")
    a.add_argument("--csv", metavar="FILE", help="write the per-layer table as CSV")
    a.add_argument("--parquet", metavar="FILE", help="write the per-layer table as Parquet")
    a.add_argument("--rank", type=int, default=None, help="analyse one rank only")
    a.add_argument("--window", metavar="START:END", default=None,
                   help="only this time window, counted from the trace's first event (us; or add ms / s: 5ms:20ms)")
    a.add_argument("--step-regex", metavar="REGEX", default=DEFAULT_STEP,
                   help="CPU ranges that mark one step (engine iteration); its first group is the step number "
                        f"(default {DEFAULT_STEP!r}: torch.profiler's steps, else the step-like ranges of "
                        "replay/data/annotations.toml: forward_step, decode_step, execute_model, run_batch, ...)")
    a.add_argument("--step", type=int, default=None, help="only this profiler step (default: all)")
    a.add_argument("--microbatches", type=int, default=None,
                   help="micro-batches per layer when structure must be guessed from the dispatch sequence")
    a.add_argument("--min-lost-us", type=finite, default=1.0,
                   help="list idle findings of at least this many microseconds (totals count them all)")
    a.add_argument("--allow-mixed", action="store_true",
                   help="analyse a folder whose files look like different runs (they do not run the same "
                        "collectives); refused without it")
    a.add_argument("--top", type=int, default=10, help="findings shown in the table")
    a.add_argument("--max-findings", type=int, default=None, help="cap the findings list in --json")
    a.add_argument("--all-findings", action="store_true",
                   help="list every finding in --json (default: the largest 20 of each kind on each rank, with "
                        "findings_by_kind counting them all)")
    a.add_argument("--findings", metavar="FILE",
                   help="write every finding to FILE: .parquet, .jsonl or .csv (for scripts; any size)")
    a.add_argument("--jobs", type=int, default=None,
                   help="parse a folder's rank files on this many processes; the result is the same (default: one "
                        "per core for a folder of 64 MB or more of rank files, else 1)")
    a.add_argument("--cluster", metavar="ADDRESS", default=None,
                   help="parse the rank files on a Dask cluster: its scheduler address (tcp://host:8786), or 'env' "
                        "for $DASK_SCHEDULER_ADDRESS; workers must read the same paths and have moe-timeline "
                        "installed (pip install 'moe-timeline[cluster]')")


def _add_diff(sub: argparse._SubParsersAction) -> None:
    df = add_command(sub, "diff", cmd_diff, help="what changed between two observed runs, with a verdict",
                     description="Compare two observed runs (files or folders) per step: span, overlap, every idle "
                                 "cause and what held the launches back, per rank and per stage. Ranks match by "
                                 "number; figures are per profiler step, so runs of different lengths compare. "
                                 "Exit 1 when --fail-if-slower is given and AFTER is slower by more than it.",
                     epilog="examples:\n  replay diff traces/observed/deepep-h100x4/prefill-improper "
                            "traces/observed/deepep-h100x4/prefill-proper\n"
                            "  replay diff before.json.gz after.json.gz --fail-if-slower 2   (a CI gate)\n"
                            "  replay diff before/ after/ --html diff.html")
    df.add_argument("before", help="the run before the change (file or folder of ranks)")
    df.add_argument("after", help="the run after the change")
    add_reading_args(df, json_help="print one JSON object (matched, overall, causes, groups, ranks, stages, verdict)",
                     stages=True)
    df.add_argument("--fail-if-slower", type=finite, metavar="PCT", default=None,
                    help="exit 1 if AFTER's step span is more than PCT percent longer than BEFORE's")
    df.add_argument("--html", metavar="FILE", help="also write a Bokeh view of the differences")


def _add_merge(sub: argparse._SubParsersAction) -> None:
    mg = add_command(sub, "merge", cmd_merge, help="a folder of rank traces as one clock-aligned trace for Perfetto",
                     description="Write the rank files of a folder as one Chrome JSON trace: processes renamed "
                                 "'rank R: ...', each rank's clock moved by the offset `replay analyze` finds from "
                                 "matched collectives, so ui.perfetto.dev shows every rank on one timeline.",
                     epilog="example:\n  replay merge traces/observed/deepep-h100x4/prefill-late -o late.json.gz")
    mg.add_argument("folder", help="folder of per-rank traces")
    mg.add_argument("-o", "--output", required=True, help="merged trace (.json or .json.gz)")
    add_reading_args(mg, json_help="print what was merged as JSON")
    mg.add_argument("--allow-mixed", action="store_true", help="merge files that look like different runs")


def _add_compare(sub: argparse._SubParsersAction) -> None:
    c = add_command(sub, "compare", cmd_compare,
                    help="predicted vs observed, stage by stage, with likely causes",
                    epilog=EPILOG_COMPARE,
                    description="Align a prediction (tracegen trace) and an observed trace by rank, layer, "
                                "micro-batch and stage; report each stage's error, per-layer overlap and "
                                "exposed communication, and the largest discrepancies with their likely cause.")
    c.add_argument("predicted", help="the predicted trace (usually from tracegen trace)")
    c.add_argument("observed", help="the observed trace (profiler JSON, or another tracegen trace)")
    add_reading_args(c, stages=True)
    c.add_argument("--csv", metavar="FILE", help="write the per-stage table as CSV")
    c.add_argument("--rank-map", metavar="OBS:PRED,...", help="pair observed ranks with predicted ones")
    c.add_argument("--layer-offset", type=int, default=0, help="add this to the observed trace's layer numbers")
    c.add_argument("--top", type=int, default=10, help="discrepancies listed")
    c.add_argument("--step", type=int, default=None, help=STEP_HELP)


def _add_whatif(sub: argparse._SubParsersAction) -> None:
    w = add_command(sub, "whatif", cmd_whatif,
                    help="re-time an observed trace under a change and write the new trace",
                    epilog=EPILOG_WHATIF,
                    description="Rebuild the stage graph of an observed trace (durations as observed, stream "
                                "and launch order, CPU-blocking dispatches, two-batch-overlap dependencies), "
                                "apply a change, re-time it with tracegen's scheduler and write the new trace.")
    w.add_argument("observed", help="observed trace (tracegen's, or a profiler trace with stage annotations)")
    w.add_argument("-o", "--output", required=True, help="new trace: .json, .json.gz or .pftrace")
    w.add_argument("--launch-order", choices=("proper", "improper"), default=None,
                   help="issue the stages in this two-batch-overlap order instead of the observed one")
    w.add_argument("--comm-scale", type=finite, default=1.0, help="multiply communication transfer times")
    w.add_argument("--compute-scale", type=finite, default=1.0, help="multiply computation times")
    w.add_argument("--comm", choices=(IBGDA, NORMAL, CPU_PROXY), default=None,
                   help="another all-to-all backend: its SM use, CPU blocking, latency and proxy cost")
    w.add_argument("--hardware", default=None, help="hardware of a profiler trace (default: from the trace)")
    w.add_argument("--rank", type=int, default=None, help="profiler traces: the rank to re-time")
    w.add_argument("--step", type=int, default=None, help=STEP_HELP)
    add_reading_args(w, json_help="print the result as JSON", stages=True)


def _add_sql(sub: argparse._SubParsersAction) -> None:
    q = add_command(sub, "sql", cmd_sql,
                    help="SQL (DuckDB) over a trace's events and replay's results",
                    epilog=EPILOG_SQL,
                    description="Analyse a trace or a folder of per-rank traces and run one SQL query over "
                                "views of the result: events, kernels, layers, findings, ranks, steps "
                                "(--views lists their columns). Needs DuckDB: pip install 'moe-timeline[sql]'.")
    q.add_argument("trace", help="trace file (.json / .json.gz) or folder of per-rank traces")
    q.add_argument("query", nargs="?", default=None, help="one SQL statement (quote it)")
    add_reading_args(q, json_help="print {columns, rows} as JSON")
    q.add_argument("--views", action="store_true", help="list the views and their columns")
    q.add_argument("--csv", metavar="FILE", help="write the result as CSV")
    q.add_argument("--max-rows", type=int, default=50, help="rows printed in the table (default 50)")
    q.add_argument("--step-regex", metavar="REGEX", default=DEFAULT_STEP, help="as for replay analyze")


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    c = add_command(sub, "calibrate", cmd_calibrate,
                    help="fit the cost model's efficiency curves to an observed trace",
                    epilog=EPILOG_CALIBRATE,
                    description="Match the ops of observed traces (profiler ranges named op=... with FLOPs and "
                                "bytes, or tracegen's own traces) to the cost model, fit each op kind's "
                                "efficiency curve and kernel floor, and write a hardware file.")
    c.add_argument("observed", nargs="+", help="observed trace(s): .json / .json.gz")
    c.add_argument("-o", "--output", required=True, help="hardware file to write (JSON)")
    c.add_argument("--hardware", "--gpu", "-g", dest="hardware", default=None,
                   help="hardware to start from (default: read from the trace)")
    c.add_argument("--hardware-file", default=None, metavar="FILE", help="start from your own hardware file")
    c.add_argument("--holdout-m", default=None, metavar="M,M,...",
                   help="leave ops with these row counts out of the fit and report them apart")
    c.add_argument("--holdout-name", default=None, metavar="NAME,...",
                   help="leave ops of these names out of the fit (e.g. shared_up,shared_down)")
    c.add_argument("--report", default=None, metavar="CSV", help="write every op's observed and predicted time")
    c.add_argument("--json", action="store_true", help="print the result as JSON")


main = entry_point("replay", build_parser)


console = command(main)          # the `replay` command (pyproject's console script)


if __name__ == "__main__":
    console()
