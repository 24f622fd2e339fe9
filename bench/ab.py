"""Paired A/B runs of the `replay analyze` command from two checkouts, in fresh processes, the order
alternating each round (a shared machine's load then falls on both alike): each side's median wall
time, the median and mean of the paired differences, how often the second was faster, and the peak
RSS summed over each run's process tree (sampled every 50 ms, /proc).

    python -m bench.ab BASE_CHECKOUT FOLDER_OR_FILE [--runs 11] [-- extra replay analyze flags]

BASE_CHECKOUT is another worktree of this repository (`git worktree add /tmp/base <ref>`); the other
side is this checkout. Both run on this checkout's interpreter (its venv)."""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("VmRSS")), 0) / 1024
    except OSError:
        return 0.0


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def run_once(checkout: Path, argv: list[str]) -> tuple[float, float]:
    """Wall seconds and peak tree RSS (MB) of `python -m replay.cli analyze ...` run from `checkout`."""
    env = dict(os.environ, PYTHONPATH=str(checkout))
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "replay.cli", "analyze", *argv], cwd=checkout, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0.0
    while p.poll() is None:
        todo, tree = [p.pid], []
        while todo:
            x = todo.pop()
            tree.append(x)
            todo += _children(x)
        peak = max(peak, sum(_rss_mb(x) for x in tree))
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"{checkout}: replay analyze exited {p.returncode}: {p.stderr.read().decode()[-300:]}")
    return wall, peak


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", type=Path, help="the other checkout (a git worktree)")
    ap.add_argument("trace", help="the folder or file both analyse")
    ap.add_argument("--runs", type=int, default=11, help="rounds (each runs both sides once)")
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []      # more `replay analyze` flags, after --
    a = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    args = [str(Path(a.trace).resolve()), "--no-cache", *extra]
    base, here = [], []
    for i in range(a.runs):
        if i % 2:
            here.append(run_once(ROOT, args))
            base.append(run_once(a.base.resolve(), args))
        else:
            base.append(run_once(a.base.resolve(), args))
            here.append(run_once(ROOT, args))
    d = [h[0] - b[0] for h, b in zip(here, base)]
    print(f"base {a.base}: median {statistics.median(x[0] for x in base):.3f} s, peak {max(x[1] for x in base):.0f} MB")
    print(f"this checkout: median {statistics.median(x[0] for x in here):.3f} s, peak {max(x[1] for x in here):.0f} MB")
    print(f"paired difference (this - base): median {statistics.median(d) * 1000:+.0f} ms, mean "
          f"{statistics.mean(d) * 1000:+.0f} ms; this faster in {sum(x < 0 for x in d)} of {len(d)}; "
          f"ratio of medians {statistics.median(x[0] for x in here) / statistics.median(x[0] for x in base):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
