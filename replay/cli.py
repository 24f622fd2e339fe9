"""`replay`: measure computation/communication overlap in real (or generated) traces."""
from __future__ import annotations

import argparse
import json
import sys

from tracegen.cli import _Formatter, _Parser
from tracegen.errors import run_cli

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


def cmd_analyze(args: argparse.Namespace) -> int:
    from .analyze import analyze, parse_window
    from .report import render, write_layers
    window = parse_window(args.window) if args.window else None
    a = analyze(args.trace, taxonomy=args.taxonomy, rank=args.rank, window=window, use_cache=not args.no_cache,
                microbatches=args.microbatches, min_lost_us=args.min_lost_us)
    if args.csv:
        write_layers(a, args.csv, "csv")
    if args.parquet:
        write_layers(a, args.parquet, "parquet")
    if args.json:
        json.dump(a.to_dict(max_findings=args.max_findings), sys.stdout, indent=1, default=float)
        sys.stdout.write("\n")
    else:
        print(render(a, top=args.top))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="replay", formatter_class=_Formatter, description=__doc__)
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    a = sub.add_parser("analyze", help="overlap, exposed communication and idle causes of a trace",
                       formatter_class=_Formatter, epilog=EPILOG,
                       description="Load a PyTorch-profiler (Kineto) / Chrome trace - .json, .json.gz or a folder "
                                   "of per-rank files - and measure, per rank, layer and micro-batch, how much "
                                   "communication computation hides, and why the GPU idles.")
    a.add_argument("trace", help="trace file (.json / .json.gz) or folder of per-rank traces")
    a.add_argument("--json", action="store_true", help="print one JSON object (ranks, layers, findings)")
    a.add_argument("--csv", metavar="FILE", help="write the per-layer table as CSV")
    a.add_argument("--parquet", metavar="FILE", help="write the per-layer table as Parquet")
    a.add_argument("--rank", type=int, default=None, help="analyse one rank only")
    a.add_argument("--window", metavar="START:END", default=None,
                   help="only this time window, counted from the trace's first event (us; or add ms / s: 5ms:20ms)")
    a.add_argument("--taxonomy", metavar="FILE", default=None,
                   help="extra kernel-classification rules (TOML, tried before the built-in ones)")
    a.add_argument("--microbatches", type=int, default=None,
                   help="micro-batches per layer when structure must be guessed from the dispatch sequence")
    a.add_argument("--min-lost-us", type=float, default=1.0,
                   help="list idle findings of at least this many microseconds (totals count them all)")
    a.add_argument("--top", type=int, default=10, help="findings shown in the table")
    a.add_argument("--max-findings", type=int, default=None, help="cap the findings list in --json")
    a.add_argument("--no-cache", action="store_true",
                   help="parse the file even if its columnar cache exists (cache: $MOE_TIMELINE_CACHE "
                        "or ~/.cache/moe-timeline)")
    a.set_defaults(func=cmd_analyze)
    return p


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def main(argv: list[str] | None = None) -> int:
    return run_cli("replay", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
