"""`make bench`: speed, measured as ratios against baselines run in the same session (the machines
are shared and noisy), plus replay's agreement with Holistic Trace Analysis on a real NCCL trace.

  tracegen   a full 61-layer, 2-micro-batch DeepSeek-V3 decode trace for 8 ranks
  big        64 rank files of 100 MB (6.4 GB; BENCH_BIG_RANKS, BENCH_BIG_MB) through the two-stage
             folder analysis with --jobs 2, against the ideal and the whole-table analysis; HTA on
             8 of them (`python -m bench.run --big-only` runs this part alone)
  deploy     tracegen deploy with 100,000 requests, PD and colocated, against 100 requests (the
             step tables' fixed cost); `python -m bench.run --deploy-only` runs this part alone
  replay     load + analyze of train.json and of synthetic traces made by repeating it (to ~1 GB),
             against json.load of the same file and HTA's load + get_comm_comp_overlap
  viz        viz html of a 61-layer 8-rank trace and of train.json; a dashboard widget redraw
  HTA        hidden share of communication on traces/observed/h200x2-nccl, replay vs HTA
  ranks      replay analyze of a folder of ranks: the 4 real DeepEP ranks of
             traces/observed/deepep-h100x4/prefill-proper and 64 ranks made by replicating them
             (distributedInfo.rank rewritten), against the same analysis by the tree at
             BENCH_BASELINE_REF (a git ref, e.g. the commit before the cross-rank analysis) when set.
             `python -m bench.run --ranks-only` runs this part alone, with:
  folders    16, 64 and 256 ranks (the 4 real ones replicated, ranks rewritten, timestamps jittered)
             on one process and with --jobs 2 against the ideal (one rank x ranks / cores); HTA on
             the 16-rank folder; --cluster on a local 2-worker Dask cluster (overhead per rank); a
             folder with 2 unreadable ranks.

Each timed run is a fresh subprocess (wall time and peak RSS from the OS); the table is printed
and written to bench/out/results.json. BENCH_MAX_MB caps the synthetic sizes (default 1000)."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
TRAIN = Path(os.environ.get("MOE_SHARED", ROOT.parent / "shared")) / "traces" / "deepseek-profile-data" / "train.json"
NCCL = ROOT / "traces" / "observed" / "h200x2-nccl"
PY = sys.executable
# HTA in an environment of its own (it pins pandas and plotly; the project does not depend on it):
# BENCH_HTA_PYTHON=/path/to/venv/bin/python; by default HTA is looked for beside the project
HTA_PY = os.environ.get("BENCH_HTA_PYTHON", PY)
DEEPEP = ROOT / "traces" / "observed" / "deepep-h100x4" / "prefill-proper"


def replicated(ranks: int, jitter_us: float = 0.0) -> Path:
    """A folder of `ranks` rank files cycling through the 4 real DeepEP ranks, each claiming its
    rank; with `jitter_us`, every timestamp of a file shifted by its own jitter in [0, jitter_us)
    (seeded)."""
    import gzip
    import random
    d = OUT / (f"deepep-j{ranks}" if jitter_us else f"deepep-x{ranks}")
    if d.exists() and len(list(d.glob("*.json.gz"))) == ranks:
        return d
    d.mkdir(parents=True, exist_ok=True)
    src = [json.loads(gzip.open(DEEPEP / f"rank{r}.json.gz", "rt").read()) for r in range(4)]
    rng = random.Random(12)
    for r in range(ranks):
        data = dict(src[r % 4])
        if jitter_us:
            shift = rng.uniform(0.0, jitter_us)
            data["traceEvents"] = [{**e, "ts": e["ts"] + shift} if isinstance(e.get("ts"), (int, float)) else e
                                   for e in src[r % 4]["traceEvents"]]
        data["distributedInfo"] = {**data.get("distributedInfo", {}), "rank": r, "world_size": ranks}
        with gzip.open(d / f"rank{r}.json.gz", "wt", compresslevel=1) as f:
            json.dump(data, f)
    return d


def rank_folders(results: dict, rows: list) -> None:
    """Analyse time and peak memory of rank folders, now and (BENCH_BASELINE_REF) before."""
    if not DEEPEP.exists():
        print(f"(no {DEEPEP}: rank-folder benchmarks skipped)")
        return
    ref = os.environ.get("BENCH_BASELINE_REF")
    base = None
    if ref:
        base = OUT / f"baseline-{ref}"
        if not base.exists():
            subprocess.run(["git", "worktree", "add", "--detach", str(base), ref], cwd=ROOT, check=True,
                           capture_output=True)
    results["rank_folders"] = []
    for ranks, folder in ((4, DEEPEP), (64, replicated(64))):
        code = ("import contextlib, io; from replay.cli import main\nwith contextlib.redirect_stdout(io.StringIO()): "
                f"rc = main(['analyze', {str(folder)!r}, '--no-cache'])" + _REFUSED)
        now = timed(code, repeat=3)
        entry = {"ranks": ranks, "now": now}
        note = f"peak {now.get('peak_mb', 0):.0f} MB"
        if base is not None:
            before = timed(f"import sys; sys.path.insert(0, {str(base)!r}); " + code.replace(", progress=False", ""),
                           repeat=3)
            entry["before"] = {**before, "ref": ref}
            note += (f"; before ({ref}) {before.get('wall_s', float('nan')):.2f} s, peak "
                     f"{before.get('peak_mb', 0):.0f} MB: now x{now.get('wall_s', 0) / before.get('wall_s', 1):.2f} time")
        results["rank_folders"].append(entry)
        rows.append((f"replay analyze: {ranks}-rank DeepEP folder", now.get("wall_s"), note))


JITTER_US = 50.0     # per-file timestamp shift of the folder-scaling runs


def folder_scaling(results: dict, rows: list) -> None:
    """Issue 12's measurements: folders of 16, 64 and 256 jittered ranks, analysed on one process
    and with --jobs 2, against the ideal (one rank's time x ranks / cores); HTA on the 16-rank
    folder; the Dask path's overhead per rank on a local 2-worker cluster; a truncated rank."""
    if not DEEPEP.exists():
        return
    cores = os.cpu_count() or 1
    one = timed(f"from replay.analyze import analyze; analyze({str(DEEPEP / 'rank0.json.gz')!r}, use_cache=False, "
                "progress=False)", repeat=3)
    results["folder_scaling"] = {"one_rank": one, "cores": cores, "folders": []}
    for ranks in (16, 64, 256):
        folder = replicated(ranks, JITTER_US)
        entry = {"ranks": ranks}
        for jobs in (1, 2):
            entry[f"jobs{jobs}"] = timed(_TREE + "import contextlib, io; from replay.cli import main\n"
                                         "with contextlib.redirect_stdout(io.StringIO()): "
                                         f"rc = main(['analyze', {str(folder)!r}, '--no-cache', '--jobs', '{jobs}'])"
                                         + _REFUSED)
        ideal = one.get("wall_s", float("nan")) * ranks / cores
        entry["ideal_s"] = ideal
        results["folder_scaling"]["folders"].append(entry)
        j1, j2 = entry["jobs1"], entry["jobs2"]
        rows.append((f"replay analyze: {ranks} jittered ranks, --jobs 2", j2.get("wall_s"),
                     f"peak {j2.get('peak_tree_mb', 0):.0f} MB all processes ({j2.get('peak_mb', 0):.0f} MB the largest); "
                     f"--jobs 1 {j1.get('wall_s', float('nan')):.2f} s, {j1.get('peak_tree_mb', 0):.0f} MB; "
                     f"ideal (1 rank x {ranks} / {cores} cores) {ideal:.2f} s: "
                     f"x{j2.get('wall_s', float('nan')) / ideal:.2f}"))
    folder16 = replicated(16, JITTER_US)
    if hta_available():
        hta = timed("from hta.trace_analysis import TraceAnalysis; "
                    f"ta = TraceAnalysis(trace_dir={str(folder16)!r}); ta.get_comm_comp_overlap(visualize=False)",
                    python=HTA_PY)
        ours = results["folder_scaling"]["folders"][0]["jobs1"]
        results["folder_scaling"]["hta16"] = hta
        rows.append(("HTA TraceAnalysis: 16 jittered ranks", hta.get("wall_s"),
                     f"peak {hta.get('peak_mb', 0):.0f} MB; ours {ours.get('wall_s', float('nan')):.2f} s: "
                     f"{hta.get('wall_s', float('nan')) / ours.get('wall_s', float('nan')):.1f}x faster"
                     if "wall_s" in hta else f"failed: {hta.get('error', '')[-80:]}"))
    cluster = timed("import time, json\nfrom distributed import LocalCluster\nfrom replay.analyze import analyze\n"
                    "with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as lc:\n"
                    "    t = time.perf_counter()\n"
                    "    from replay.folder import Options, analyze_folder\n"
                    f"    analyze_folder({str(folder16)!r}, Options(use_cache=False), progress=False, "
                    "cluster=lc.scheduler_address)\n"
                    "    c = time.perf_counter() - t\n"
                    "    t = time.perf_counter()\n"
                    f"    analyze_folder({str(folder16)!r}, Options(use_cache=False), progress=False)\n"
                    "    print(json.dumps({'cluster_s': c, 'local_s': time.perf_counter() - t}))")
    results["folder_scaling"]["cluster16"] = cluster
    if "cluster_s" in cluster:
        rows.append(("replay analyze --cluster (local 2 workers), 16 ranks", cluster["cluster_s"],
                     f"one process {cluster['local_s']:.2f} s: overhead "
                     f"{1e3 * (cluster['cluster_s'] - cluster['local_s']) / 16:+.0f} ms per rank"))
    bad = OUT / "deepep-j16-bad"
    if not bad.exists():
        import shutil
        shutil.copytree(folder16, bad)
        (bad / "rank5.json.gz").write_bytes((bad / "rank5.json.gz").read_bytes()[:5000])
        (bad / "rank9.json.gz").write_text("not a trace")
    r = subprocess.run([PY, "-m", "replay.cli", "analyze", str(bad), "--no-cache"], cwd=ROOT, capture_output=True,
                       text=True)
    s_ = subprocess.run([PY, "-m", "replay.cli", "analyze", str(bad), "--no-cache", "--strict"], cwd=ROOT,
                        capture_output=True, text=True)
    warn = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    results["folder_scaling"]["bad_input"] = {"rc": r.returncode, "warnings": warn, "strict_rc": s_.returncode}
    rows.append(("bad input: 16 ranks, 2 unreadable", None,
                 f"exit {r.returncode}, {len(warn)} warning lines, 14 ranks analysed; --strict exit {s_.returncode}"))


# a sampler of the whole process tree's resident memory (this process and every descendant, every
# 0.2 s), for runs whose workers hold memory at once: prints peak_tree_mb at exit
_TREE = """
import os as _o, threading as _t, time as _tm, atexit as _ax, json as _jj
_peak = [0.0]
def _rss(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
def _sample():
    me = _o.getpid()
    while True:
        parent = {}
        for p in _o.listdir("/proc"):
            if p.isdigit():
                try:
                    parent[int(p)] = int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    pass
        tree, todo = {me}, [me]
        while todo:
            q = todo.pop()
            for c, pp in parent.items():
                if pp == q and c not in tree:
                    tree.add(c)
                    todo.append(c)
        _peak[0] = max(_peak[0], sum(_rss(p) for p in tree))
        _tm.sleep(0.2)
_t.Thread(target=_sample, daemon=True).start()
_ax.register(lambda: print(_jj.dumps({"peak_tree_mb": _peak[0]})))
"""

_PEAK = ("\nimport resource as _r, json as _j\n"
         "print(_j.dumps({'peak_mb': max(_r.getrusage(_r.RUSAGE_SELF).ru_maxrss,"
         " _r.getrusage(_r.RUSAGE_CHILDREN).ru_maxrss) / 1024}))")
# a timed `replay analyze` that refused its input is an error, not a time (a refusal is fast and says
# nothing); one that succeeded ends as the `replay` command ends (replay.cli.console: exit_now)
_REFUSED = ("\nif rc:\n    raise SystemExit('replay analyze exited %d' % rc)" + _PEAK
            + "\ntry:\n    from tracegen.base.errors import exit_now as _x\nexcept ImportError:  # a checkout from before it\n"
            "    _x = None\nif _x:\n    _x(rc)")


def big_folder(ranks: int, mb: float) -> Path:
    """`ranks` rank files of about `mb` MB each: the 4 real DeepEP ranks' events repeated (a profiler
    step per copy, times and correlation ids moved on), each file claiming its own rank."""
    import gzip
    d = OUT / f"big-{ranks}x{int(mb)}"
    if d.exists() and len(list(d.glob("rank*.json"))) == ranks:
        return d
    d.mkdir(parents=True, exist_ok=True)
    bodies, copies = [], 0
    for r in range(4):
        src = json.loads(gzip.open(DEEPEP / f"rank{r}.json.gz", "rt").read())
        ev = src["traceEvents"]
        xs = [e["ts"] for e in ev if isinstance(e.get("ts"), (int, float))]
        span = max(xs) - min(xs) + 1000.0
        steps = sum(1 for e in ev if str(e.get("name", "")).startswith("ProfilerStep#"))
        # as many copies as rank 0 gets, on every rank: one run, every rank the same steps and collectives
        copies = copies if r else max(1, round(mb * 1e6 / len(",\n".join(json.dumps(e) for e in ev))))
        parts = []
        for k in range(copies):
            for e in ev:
                e2 = dict(e)
                if isinstance(e2.get("ts"), (int, float)):
                    e2["ts"] = e2["ts"] + k * span
                if isinstance(e2.get("id"), int):
                    e2["id"] = e2["id"] + k * 10_000_000
                if isinstance(e2.get("args"), dict) and isinstance(e2["args"].get("correlation"), int):
                    e2["args"] = {**e2["args"], "correlation": e2["args"]["correlation"] + k * 10_000_000}
                name = str(e2.get("name", ""))
                if name.startswith("ProfilerStep#"):
                    e2["name"] = f"ProfilerStep#{k * steps + int(name.split('#')[1])}"
                parts.append(json.dumps(e2))
        bodies.append((src, ",\n".join(parts).encode()))
    for r in range(ranks):
        src, body = bodies[r % 4]
        head = {k: v for k, v in src.items() if k != "traceEvents"}
        head["distributedInfo"] = {**head.get("distributedInfo", {}), "rank": r, "world_size": ranks}
        with open(d / f"rank{r}.json", "wb") as f:
            f.write(json.dumps(head)[:-1].encode() + b', "traceEvents": [\n' + body + b"\n]}\n")
    return d


def realistic_folder(results: dict, rows: list) -> None:
    """Issue 30: the folder people have - 4 ranks of ~32 MB (the DeepEP ranks' steps repeated) - analysed
    by `replay analyze DIR` (text and --json, the default --jobs) against json.load of the same files,
    and HTA's load + overlap when installed, in this run."""
    folder = big_folder(4, 32)
    files = sorted(str(f) for f in folder.glob("rank*.json"))
    run = ("import contextlib, os\nfrom replay.cli import main\nwith contextlib.redirect_stdout(open(os.devnull, 'w')):"
           f"\n    rc = main(['analyze', {str(folder)!r}, '--no-cache'")
    jl, text, js = interleaved([f"import json\nfor f in {files!r}: json.load(open(f))", run + "])" + _REFUSED,
                                run + ", '--json'])" + _REFUSED], repeat=5)
    results["realistic_folder"] = {"json_load": jl, "text": text, "json": js}
    for name, r in (("text", text), ("--json", js)):
        rows.append((f"replay analyze 4 x 32 MB folder ({name})", r.get("wall_s"),
                     f"{r.get('wall_s', float('nan')) / jl.get('wall_s', float('nan')):.2f}x json.load of the same "
                     f"files ({jl.get('wall_s', float('nan')):.2f} s); peak {r.get('peak_mb', 0):.0f} MB"))
    if hta_available():
        hta = timed("from hta.trace_analysis import TraceAnalysis; "
                    f"TraceAnalysis(trace_dir={str(folder)!r}).get_comm_comp_overlap()", timeout=1800, python=HTA_PY)
        results["realistic_folder"]["hta"] = hta
        rows.append(("HTA TraceAnalysis: the same 4 x 32 MB folder", hta.get("wall_s"),
                     f"ours {text.get('wall_s', float('nan')):.2f} s: "
                     f"{hta.get('wall_s', float('nan')) / text.get('wall_s', float('nan')):.1f}x faster"
                     if "wall_s" in hta else f"failed: {hta.get('error', '')[-80:]}"))


def startup(results: dict, rows: list) -> None:
    """`replay --help` in a fresh process against the bare interpreter (`python -c pass`), same run
    (issue 30: start-up <= 0.15 s)."""
    walls: dict[str, list[float]] = {"help": [], "bare": []}
    for _ in range(5):
        for key, argv in (("help", [PY, "-m", "replay.cli", "--help"]), ("bare", [PY, "-c", "pass"])):
            t0 = time.perf_counter()
            subprocess.run(argv, cwd=ROOT, capture_output=True)
            walls[key].append(time.perf_counter() - t0)
    help_s, bare_s = statistics.median(walls["help"]), statistics.median(walls["bare"])
    results["startup"] = {"replay_help_s": help_s, "python_bare_s": bare_s}
    rows.append(("replay --help (start-up)", help_s,
                 f"bare interpreter {bare_s:.2f} s; imports {help_s - bare_s:.2f} s"))


def big_folders(results: dict, rows: list) -> None:
    """Issue 12's bounded memory: BENCH_BIG_RANKS (64) rank files of BENCH_BIG_MB (100) MB, analysed
    by `replay analyze DIR --jobs 2` (two stages; table output), against one rank file's time x ranks / cores
    and against the whole-table analysis (analyze(), every rank in one table) in the same run;
    HTA on the first BENCH_HTA_RANKS (8) of them."""
    if not DEEPEP.exists():
        return
    ranks, mb = int(os.environ.get("BENCH_BIG_RANKS", 64)), float(os.environ.get("BENCH_BIG_MB", 100))
    folder = big_folder(ranks, mb)
    size = sum(f.stat().st_size for f in folder.glob("rank*.json")) / 1e6
    cores = os.cpu_count() or 1
    one = timed(f"from replay.analyze import analyze; analyze({str(folder / 'rank0.json')!r}, use_cache=False, "
                "progress=False)")
    def cli(path: Path) -> str:
        return ("import sys, contextlib, io; from replay.cli import main\nwith contextlib.redirect_stdout(io.StringIO()): "
                f"rc = main(['analyze', {str(path)!r}, '--no-cache', '--jobs', '2'])" + _REFUSED)
    staged = timed(_TREE + cli(folder))
    whole = timed(_TREE + f"from replay.analyze import analyze; analyze({str(folder)!r}, use_cache=False, "
                  "progress=False, jobs=2)")
    ideal = one.get("wall_s", float("nan")) * ranks / cores
    results["big_folder"] = {"ranks": ranks, "mb": size, "one": one, "staged": staged, "whole": whole, "ideal_s": ideal}
    rows.append((f"replay analyze: {ranks} ranks x {size / ranks:.0f} MB ({size / 1e3:.1f} GB), --jobs 2",
                 staged.get("wall_s"),
                 f"peak {staged.get('peak_tree_mb', 0):.0f} MB all processes ({staged.get('peak_mb', 0):.0f} MB the "
                 f"largest); ideal {ideal:.1f} s (x{staged.get('wall_s', float('nan')) / ideal:.2f}); whole-table "
                 f"analysis {whole.get('wall_s', float('nan')):.1f} s, {whole.get('peak_tree_mb', 0):.0f} MB all "
                 f"processes"))
    n = min(ranks, int(os.environ.get("BENCH_HTA_RANKS", 8)))
    sub = OUT / f"big-{n}-of-{ranks}x{int(mb)}"
    sub.mkdir(exist_ok=True)
    for r in range(n):
        link = sub / f"rank{r}.json"
        if not link.exists():
            link.symlink_to(folder / f"rank{r}.json")
    ours = timed(cli(sub))
    results["big_folder"]["ours_sub"] = ours
    if hta_available():
        hta = timed("from hta.trace_analysis import TraceAnalysis; "
                    f"ta = TraceAnalysis(trace_dir={str(sub)!r}); ta.get_comm_comp_overlap(visualize=False)",
                    timeout=3600, python=HTA_PY)
        results["big_folder"]["hta_sub"] = hta
        rows.append((f"HTA TraceAnalysis: {n} ranks x {size / ranks:.0f} MB", hta.get("wall_s"),
                     f"peak {hta.get('peak_mb', 0):.0f} MB; ours (--jobs 2) {ours.get('wall_s', float('nan')):.1f} s, "
                     f"{ours.get('peak_mb', 0):.0f} MB: {hta.get('wall_s', float('nan')) / ours.get('wall_s', 1):.1f}x"
                     if "wall_s" in hta else f"failed: {hta.get('error', '')[-80:]}"))


def timed(code: str, repeat: int = 1, timeout: float | None = None, python: str = PY) -> dict:
    """Run `code` in a fresh interpreter (`python`: HTA_PY for HTA); wall seconds (median), and the peak
    RSS of the process or of any worker it started (MB), as the process itself reads it at exit."""
    walls, res = [], {}
    for _ in range(repeat):
        t0 = time.perf_counter()
        try:
            r = subprocess.run([python, "-c", code if _PEAK in code else code + _PEAK], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:g} s"}
        walls.append(time.perf_counter() - t0)
        if r.returncode != 0:
            return {"error": (r.stderr or r.stdout)[-400:]}
        for line in r.stdout.strip().splitlines():
            if line.startswith("{"):
                res.update(json.loads(line))
    return {"wall_s": statistics.median(walls), **res}


def interleaved(codes: list[str], repeat: int) -> list[dict]:
    """timed() of each code, the codes taking turns `repeat` times (a shared machine's load then
    falls on all of them alike); each one's median wall time and largest peak."""
    runs: list[list[dict]] = [[] for _ in codes]
    for _ in range(repeat):
        for i, code in enumerate(codes):
            runs[i].append(timed(code))
    out = []
    for rs in runs:
        bad = next((r for r in rs if "wall_s" not in r), None)
        out.append(bad or {"wall_s": statistics.median(r["wall_s"] for r in rs),
                           "walls_s": [round(r["wall_s"], 3) for r in rs],
                           "peak_mb": max(r.get("peak_mb", 0) for r in rs)})
    return out


def synthetic(copies: int) -> Path:
    """train.json's events repeated `copies` times, shifted in time, as one Kineto file."""
    path = OUT / f"train-x{copies}.steps.json"
    if path.exists():
        return path
    data = json.loads(TRAIN.read_text())
    ev = data["traceEvents"]
    xs = [e for e in ev if "ts" in e and isinstance(e.get("ts"), (int, float))]
    span = max(e["ts"] + e.get("dur", 0) for e in xs) - min(e["ts"] for e in xs)
    with open(path, "w") as f:
        f.write('{"schemaVersion": 1, "distributedInfo": {"rank": 0, "world_size": 1},\n"traceEvents": [\n')
        first = True
        for k in range(copies):
            for e in ev:
                e2 = dict(e)
                if isinstance(e2.get("ts"), (int, float)):
                    e2["ts"] = e2["ts"] + k * (span + 1000)
                for key in ("id",):
                    if key in e2 and isinstance(e2[key], int):
                        e2[key] = e2[key] + k * 10_000_000
                if isinstance(e2.get("args"), dict) and "correlation" in e2["args"]:
                    e2["args"] = {**e2["args"], "correlation": e2["args"]["correlation"] + k * 10_000_000}
                if isinstance(e2.get("name"), str) and e2["name"].startswith("ProfilerStep#"):
                    e2["name"] = f"ProfilerStep#{k + 1}"     # one step per copy (a repeated number is refused)
                f.write(("" if first else ",\n") + json.dumps(e2))
                first = False
        f.write('\n], "traceName": "synthetic"}\n')
    return path


def deploy_speed(results: dict, rows: list) -> None:
    """tracegen deploy: 100,000 requests (PD, Poisson, H800 defaults) against the same command with
    100 requests in the same run (the step tables and the imports: the fixed cost), and colocated."""
    base = ["deploy", "--rate", "150", "--output-len", "300", "--json"]
    for name, extra in (("pd", []), ("colocated", ["--mode", "colocated", "--prefill-nodes", "22", "--rate", "60"])):
        runs = {}
        for n in (100, 100_000):
            code = ("import json,io,contextlib,time;from tracegen.cli import main;buf=io.StringIO();"
                    f"t=time.perf_counter()\nwith contextlib.redirect_stdout(buf): main({base + ['--requests', str(n)] + extra!r})\n"
                    "print(json.dumps({'simulated_s': json.loads(buf.getvalue())['simulated_s'], "
                    "'inner_s': time.perf_counter()-t}))")
            runs[n] = timed(code, repeat=3)
        results[f"deploy_{name}"] = runs
        big, small = runs[100_000], runs[100]
        rows.append((f"tracegen deploy {name}: 100,000 requests", big.get("wall_s"),
                     f"simulation {big.get('simulated_s', float('nan')):.2f} s (100 requests: "
                     f"{small.get('simulated_s', float('nan')):.2f} s, the step tables); peak "
                     f"{big.get('peak_mb', float('nan')):.0f} MB"))


def hta_available() -> bool:
    return subprocess.run([HTA_PY, "-c", "import hta"], capture_output=True).returncode == 0


_FLAGS = ("--deploy-only", "--big-only", "--ranks-only")


def main() -> int:
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print("usage: python -m bench.run [--deploy-only | --big-only | --ranks-only]\n\n" + (__doc__ or ""))
        return 0
    unknown = [a for a in sys.argv[1:] if a not in _FLAGS]
    if unknown:
        print(f"bench.run: unknown argument {unknown[0]!r} (known: {', '.join(_FLAGS)}; --help)", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    results: dict = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    rows = []
    if "--deploy-only" not in sys.argv and "--big-only" not in sys.argv:
        startup(results, rows)
        rank_folders(results, rows)
        realistic_folder(results, rows)
        folder_scaling(results, rows)
        if "--ranks-only" not in sys.argv:
            big_folders(results, rows)
    if "--deploy-only" in sys.argv:
        deploy_speed(results, rows)
        _print(rows)
        return 0
    if "--big-only" in sys.argv:
        big_folders(results, rows)
        (OUT / "results-big.json").write_text(json.dumps(results, indent=1, default=str))
        _print(rows)
        return 0
    if "--ranks-only" in sys.argv:
        _print(rows)
        return 0

    # ---- tracegen
    deploy_speed(results, rows)
    gen = timed("import time,json;t=time.perf_counter();from tracegen.cli import main;"
                "main(['trace','--phase','decode','--ranks','8','-o','bench/out/decode-61x8.json.gz']);"
                "print(json.dumps({'inner_s': time.perf_counter()-t}))", repeat=3)
    baseline = timed("import tracegen.cli, replay.events", repeat=3)
    results["tracegen_decode_61x8"] = {**gen, "import_s": baseline.get("wall_s")}
    rows.append(("tracegen trace: 61 layers x 2 mb x 8 ranks (decode)", gen.get("wall_s"),
                 f"in-process {gen.get('inner_s', float('nan')):.2f} s; interpreter+imports "
                 f"{baseline.get('wall_s', float('nan')):.2f} s"))

    # ---- replay load + analyze vs json.load vs HTA
    has_hta = hta_available()
    files = []
    if TRAIN.exists():
        files.append(TRAIN)
        max_mb = float(os.environ.get("BENCH_MAX_MB", "1000"))
        for copies in (10, 100, 330):
            if TRAIN.stat().st_size * copies / 1e6 <= max_mb * 1.05:
                files.append(synthetic(copies))
    else:
        print(f"(no {TRAIN}: replay load benchmarks skipped)")
    results["replay"] = []
    for f in files:
        mb = f.stat().st_size / 1e6
        ours = timed(f"from replay.analyze import analyze; a = analyze({str(f)!r}, use_cache=False)")
        cached = timed(f"from replay.analyze import analyze; analyze({str(f)!r})") if f == files[0] else {}
        jl = timed(f"import json; json.load(open({str(f)!r}))")
        entry = {"file": f.name, "mb": mb, "replay": ours, "json_load": jl}
        if has_hta:
            d = OUT / f"hta-{f.stem}"
            d.mkdir(exist_ok=True)
            link = d / "rank0.json"
            if not link.exists():
                link.symlink_to(f.resolve())
            entry["hta"] = timed("from hta.trace_analysis import TraceAnalysis; "
                                 f"ta = TraceAnalysis(trace_dir={str(d)!r}); ta.get_comm_comp_overlap(visualize=False)",
                                 python=HTA_PY)
        results["replay"].append(entry)
        r_s = ours.get("wall_s", float("nan"))
        note = (f"{mb / r_s:.0f} MB/s, peak {ours.get('peak_mb', 0):.0f} MB; json.load {jl.get('wall_s', float('nan')):.2f} s "
                f"(x{r_s / jl.get('wall_s', float('nan')):.2f}), peak {jl.get('peak_mb', 0):.0f} MB")
        if has_hta and "wall_s" in entry["hta"]:
            note += f"; HTA {entry['hta']['wall_s']:.2f} s (ours {entry['hta']['wall_s'] / r_s:.1f}x faster)"
        elif has_hta:
            note += f"; HTA failed: {entry['hta'].get('error', '')[-80:]}"
        if cached:
            note += f"; cached re-run {cached.get('wall_s', float('nan')):.2f} s"
        rows.append((f"replay analyze {f.name} ({mb:.0f} MB)", r_s, note))

    # ---- viz
    viz_gen = timed("from viz.cli import main; main(['html','bench/out/decode-61x8.json.gz','-o',"
                    "'bench/out/decode-61x8.html','--no-cache'])")
    rows.append(("viz html: 61 layers x 8 ranks", viz_gen.get("wall_s"), ""))
    results["viz_html_61x8"] = viz_gen
    if TRAIN.exists():
        viz_train = timed(f"from viz.cli import main; main(['html',{str(TRAIN)!r},'-o','bench/out/train.html','--no-cache'])")
        rows.append(("viz html: train.json", viz_train.get("wall_s"), ""))
        results["viz_html_train"] = viz_train
    redraw = timed("import time,json; from bokeh.document import Document; from viz.app import make_doc; "
                   "d=Document(); make_doc(d); ts=[]\n"
                   "for v in ['decode','prefill','decode','prefill','decode']:\n"
                   "    t=time.perf_counter(); d.select_one({'name':'phase'}).value=v; ts.append(time.perf_counter()-t)\n"
                   "ts.sort(); print(json.dumps({'redraw_s': ts[len(ts)//2]}))")
    rows.append(("viz serve: widget change -> redrawn timeline", redraw.get("redraw_s"), "median of 5, server side"))
    results["viz_redraw"] = redraw

    # ---- HTA agreement on a real NCCL trace
    if NCCL.exists():
        ours = timed("import json; from replay.analyze import analyze; a = analyze("
                     f"{str(NCCL)!r}, use_cache=False); print(json.dumps({{'pct': {{r['rank']: r['hidden_comm_pct'] for r in a.ranks}}}}))")
        results["nccl_hidden_pct"] = {"replay": ours.get("pct")}
        if has_hta:
            hta = timed("import json; from hta.trace_analysis import TraceAnalysis; "
                        f"ta = TraceAnalysis(trace_dir={str(NCCL)!r}); o = ta.get_comm_comp_overlap(visualize=False); "
                        "print(json.dumps({'pct': dict(zip(map(str, o['rank']), o['comp_comm_overlap_pctg']))}))", python=HTA_PY)
            results["nccl_hidden_pct"]["hta"] = hta.get("pct")
            for r, v in (ours.get("pct") or {}).items():
                h = (hta.get("pct") or {}).get(str(r))
                rows.append((f"hidden share, NCCL trace rank {r}", None,
                             f"replay {v:.2f} %  HTA {h if h is None else f'{h:.2f}'} %"))
    (OUT / "results.json").write_text(json.dumps(results, indent=1, default=str))
    _print(rows)
    print(f"\nfull results: {OUT / 'results.json'}")
    return 0


def _print(rows: list) -> None:
    print(f"\n{'benchmark':<52}{'seconds':>9}  notes")
    for name, s, note in rows:
        print(f"{name:<52}{'' if s is None else f'{s:9.2f}':>9}  {note}")


if __name__ == "__main__":
    sys.exit(main())
