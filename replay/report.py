"""Human-readable summary of an analysis, and the per-layer table as CSV or Parquet."""
from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from tracegen.base.contract import IDLE_GROUPS, OBSERVED_IDLE_CAUSES, UNEXPLAINED
from tracegen.base.errors import UserError
from tracegen.base.fileio import atomic_parquet, atomic_write

from .analysis import Analysis


def _ms(us: float) -> str:
    return f"{us / 1e3:10.3f}"


OUTSIDE_LAYERS_SHARE = 0.1    # compute outside every layer past this share of the rank's: said under the table


def outside_layers_line(layers: pd.DataFrame, ranks: list[dict]) -> list[str]:
    """How much of the rank's compute ran in no layer, where it is a large share: the per-layer table
    alone would read as the whole step (a training step's backward and optimizer, the logits, sampling)."""
    rank = int(layers["rank"].iloc[0])
    total = next((r["compute_us"] for r in ranks if r["rank"] == rank), 0.0)
    inside = min(float(layers["compute_us"].sum()), total)
    if total <= 0 or total - inside <= OUTSIDE_LAYERS_SHARE * total:
        return []
    return [f"  the layers hold {inside / 1e3:.3f} of rank {rank}'s {total / 1e3:.3f} ms of compute "
            f"({100 * inside / total:.0f} %); the rest ran outside every layer (before the first, after the last, "
            "or in work no layer range covers, such as a backward pass)"]


def phase_lines(steps: pd.DataFrame) -> list[str]:
    """The steps of the first rank by what they ran, where their ranges say it (vLLM's iteration ranges,
    replay/data/annotations.toml [phases]): a prefill step and a decode step are different work, so
    their medians are given apart."""
    if steps.empty or "phase" not in steps:
        return []
    s = steps[(steps["rank"] == steps["rank"].min()) & steps["phase"].notna()]
    if s.empty:
        return []
    out = ["", f"steps by phase, rank {int(s['rank'].iloc[0])} (medians per step; phase and tokens from the "
           "iteration ranges, or the phase from the files' profiled stage)",
           f"  {'phase':<8}{'steps':>6}{'span ms':>10}{'compute ms':>11}{'prefill tok':>14}{'decode tok':>12}"]
    for phase, g in s.groupby("phase", sort=True):
        tok = {k: pd.to_numeric(g[k], errors="coerce").median() for k in ("prefill_tokens", "decode_tokens")}
        out.append(f"  {phase:<8}{len(g):>6}{_ms(g['span_us'].median())} {_ms(g['compute_us'].median())}  "
                   + "".join(f"{'-' if pd.isna(v) else f'{v:,.0f}':>12}" for v in tok.values()))
    return out


def render(a: Analysis, top: int = 10, max_layers: int = 12) -> str:
    d = a.to_dict(max_findings=top, detail=False)
    out: list[str] = []
    src = ", ".join(Path(s).name for s in a.trace.sources[:3]) + (" ..." if len(a.trace.sources) > 3 else "")
    kind = "tracegen prediction" if a.trace.generated else "profiler trace"
    out.append(f"{src}: {kind}, {len(a.ranks)} rank(s), structure from {a.structure}"
               + (f", window {a.window[0]:g}-{a.window[1]:g} us" if a.window else "")
               + (" (cached)" if a.cached else ""))
    out.append("")
    out.append("streams (which computes, which communicates)")
    out.append(f"  {'rank':>4} {'stream':>7}  {'role':<8}{'busy ms':>10}{'compute ms':>12}{'comm ms':>10}  comm kernels")
    for s in d["streams"]:
        comm = ", ".join(f"{k} x{v}" for k, v in s["top_comm"].items())
        out.append(f"  {s['rank']:>4} {s['stream']:>7}  {s['role']:<8}{_ms(s['busy_us'])}{_ms(s['compute_us'])}  "
                   f"{_ms(s['comm_us'])}  {comm}")
    out.append("")
    out.append("overlap per rank (ms)")
    multi = len(d["ranks"]) > 1
    out.append(f"  {'rank':>4}{'span':>11}{'compute':>11}{'comm':>11}{'overlap':>11}{'exposed':>11}"
               f"{'idle':>11}{'hidden':>9}" + (f"{'peer wait':>11}" if multi else ""))
    for r in d["ranks"]:
        out.append(f"  {r['rank']:>4}{_ms(r['span_us'])} {_ms(r['compute_us'])} {_ms(r['comm_us'])} "
                   f"{_ms(r['overlap_us'])} {_ms(r['exposed_comm_us'])} {_ms(r['compute_idle_us'])}"
                   f"{r['hidden_comm_pct']:8.1f}%" + (f" {_ms(r['peer_wait_us'])}" if multi else ""))
    if multi:
        out.append(f"  clock: {d['clock']}")
    if d["stragglers"]:
        out.append("")
        out.append("stragglers (the rank its peers' communication waited for; ms of waiting it caused)")
        for s_ in d["stragglers"][:5]:
            out.append(f"  rank {s_['rank']:>4}  caused {s_['caused_us'] / 1e3:9.3f} ms over {s_['collectives']:>4} "
                       f"collectives: {s_['reason']}")
    if d["balancedness"] is not None and len(d["ranks"]) > 1:
        out.append(f"  balancedness (mean/max MoE compute across ranks): {d['balancedness']:.3f}")
    if not a.layers.empty:
        first = a.layers[a.layers["rank"] == a.layers["rank"].min()]
        out.append("")
        out.append(f"per layer, rank {int(first['rank'].iloc[0])} (ms; overlap = its communication hidden by compute)")
        out.append(f"  {'step':>4} {'layer':>5}{'span':>11}{'compute':>11}{'comm':>11}{'overlap':>11}{'exposed':>11}{'hidden':>9}  stages")
        rows = first if len(first) <= max_layers else pd.concat([first.head(max_layers // 2), first.tail(max_layers // 2)])
        for i, (_, r) in enumerate(rows.iterrows()):
            if len(first) > max_layers and i == max_layers // 2:
                out.append(f"  {'...':>5}  ({len(first) - max_layers} more layers: --csv writes them all)")
            step = str(int(r["step"])) if r["step"] >= 0 else "-"
            out.append(f"  {step:>4} {int(r['layer']):>5}{_ms(r['span_us'])} {_ms(r['compute_us'])} {_ms(r['comm_us'])} "
                       f"{_ms(r['overlap_us'])} {_ms(r['exposed_comm_us'])}{r['hidden_comm_pct']:8.1f}%  "
                       f"{r['stages'][:60]}")
        out += outside_layers_line(first, d["ranks"])
    out += phase_lines(a.steps)
    out += top_kernel_lines(a.analyses.get("top_kernels"))
    out.append("")
    out += idle_lines(d["idle_totals_us"], d["idle_by_group_us"])
    for s in d["suspicious_input"]:
        out.append(f"suspicious input ({s['what']}): {s['message']}")
    if d["findings"]:
        out.append(f"largest of {d['findings_total']} findings:")
        for f in d["findings"][:top]:
            where = f"rank {f['rank']}" + (f" step {f['step']}" if f["step"] is not None else "") + \
                    (f" layer {f['layer']}" if f["layer"] is not None else "") + \
                    (f" mb {f['microbatch']}" if f["microbatch"] is not None else "")
            kind = f["kind"] + (f"/{f['blocked_by']}" if f["blocked_by"] and len(IDLE_GROUPS[f["kind"]]) > 1 else "")
            out.append(f"  {kind:<32} {where:<29} at {f['start_us'] / 1e3:>10.3f} ms  lost {f['lost_us']:9.1f} us  "
                       f"{f['message']}")
    return "\n".join(out)


def top_kernel_lines(top: pd.DataFrame | None, n: int = 5) -> list[str]:
    """The first rank's largest kernels (replay/kernels.py; --json lists 10 per rank)."""
    if top is None or top.empty:
        return []
    rank = int(top["rank"].min())
    rows = top[top["rank"] == rank].head(n)
    out = ["", f"largest kernels, rank {rank} (share of its summed kernel time; --json: analyses.top_kernels)",
           f"  {'count':>6}{'total ms':>11}{'mean us':>10}{'share':>8}  {'class':<8} name"]
    for r in rows.itertuples(index=False):
        name = r.name if len(r.name) <= 80 else r.name[:77] + "..."
        out.append(f"  {r.count:>6}{_ms(r.total_us)}{r.mean_us:10.1f}{r.share_pct:7.1f}%  {r.klass:<8} {name}")
    return out


def idle_lines(totals: dict[str, float], groups: dict[str, dict[str, float]]) -> list[str]:
    """Why compute idles: every cause of the contract with its total, and where a cause has several
    groups, the groups behind it (what blocked the launch, or the reason seen)."""
    causes = (*OBSERVED_IDLE_CAUSES, UNEXPLAINED)
    idle = sum(totals.get(k, 0.0) for k in causes)
    out = [f"why compute idles (ms, all ranks; {idle / 1e3:.3f} ms idle): "
           + ", ".join(f"{k} {totals.get(k, 0.0) / 1e3:.3f}" for k in causes)]
    for cause in causes:
        parts = {g: v for g, v in groups.get(cause, {}).items() if v > 0}
        if len(IDLE_GROUPS.get(cause, ())) > 1 and parts:
            out.append(f"  {cause} by what held it: " + ", ".join(f"{g} {v / 1e3:.3f}" for g, v in parts.items()))
    return out


FINDINGS_FORMATS = ("parquet", "jsonl", "csv")


def findings_format(path: str | Path) -> str:
    fmt = next((f for f in FINDINGS_FORMATS if str(path).endswith(f".{f}")), None)
    if fmt is None:
        raise UserError(f"--findings {path}: name it *.parquet, *.jsonl or *.csv")
    return fmt


def write_findings(a: Analysis, path: str | Path) -> Path:
    """Every finding (the --json document's fields, start from t0) as a table for scripts."""
    fmt = findings_format(path)
    rows = [{**f, "start_us": f["start_us"] - a.t0_us} for f in a.top_findings(None)]
    if fmt == "jsonl":
        import msgspec
        enc = msgspec.json.Encoder()
        return atomic_write(path, "".join(enc.encode(r).decode() + "\n" for r in rows))
    table = pd.DataFrame(rows, columns=list(rows[0]) if rows else ["kind", "rank", "lost_us"])
    if fmt == "csv":
        buf = io.StringIO()
        table.to_csv(buf, index=False)
        return atomic_write(path, buf.getvalue())
    return atomic_parquet(path, table)


def write_layers(a: Analysis, path: str | Path, fmt: str) -> Path:
    table = a.layers
    if table.empty:
        raise UserError(f"no per-layer table to write: the trace's layers could not be recovered "
                        f"(structure: {a.structure}); not writing {path}")
    if fmt == "csv":
        buf = io.StringIO()
        table.to_csv(buf, index=False)
        return atomic_write(path, buf.getvalue())
    return atomic_parquet(path, table)
