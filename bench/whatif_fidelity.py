"""`replay whatif` with no change against every real capture in traces/observed (issue 27: span within
5 %, hidden share of communication within 2 points), and the DeepEP improper run re-timed in the proper
order against the observed proper run.

    python -m bench.whatif_fidelity"""
from __future__ import annotations

import sys
from pathlib import Path

from replay.analyze import analyze, analyze_one_step
from replay.compare import load_stage_rules
from replay.whatif import Change, retime
from replay.stagegraph import stage_graph
from tracegen.schedule import summary

ROOT = Path(__file__).resolve().parents[1]
OBS = ROOT / "traces" / "observed"
DEEPEP = OBS / "deepep-h100x4"
CAPTURES = {f"deepep-h100x4/{n}": (DEEPEP / n, None) for n in
            ("prefill-improper", "prefill-proper", "prefill-nosync", "prefill-late", "prefill-skew", "decode-proper")}
CAPTURES.update({f"h100/{n}": (OBS / "h100" / f"{n}.json.gz", str(OBS / "h100" / "taxonomy.toml"))
                 for n in ("layers-improper", "layers-proper")})
SPAN_BAR_PCT, HIDDEN_BAR_PTS = 5.0, 2.0


def _one(path: Path, taxonomy: str | None, rank: int, change: Change = Change()) -> dict:
    a, _ = analyze_one_step(path, None, taxonomy=taxonomy, rank=rank, use_cache=False, findings=False)
    g = stage_graph(a, load_stage_rules(None))
    s = summary(retime(g, change))[0]
    seen = a.ranks[0]
    return {"span_us": s["span_us"], "hidden_pct": s["hidden_comm_pct"], "observed_span_us": seen["span_us"],
            "observed_hidden_pct": seen["hidden_comm_pct"]}


def no_change_rows() -> list[dict]:
    out = []
    for name, (path, tax) in CAPTURES.items():
        if not path.exists():
            continue
        for r in analyze(path, use_cache=False, taxonomy=tax).ranks:
            x = _one(path, tax, r["rank"])
            out.append({"capture": name, "rank": r["rank"],
                        "span_error_pct": 100 * (x["span_us"] / x["observed_span_us"] - 1),
                        "hidden_error_pts": x["hidden_pct"] - x["observed_hidden_pct"]})
    return out


def reorder_rows() -> list[dict]:
    """improper -> proper on the DeepEP prefill captures, per rank, against the observed proper run."""
    out = []
    for rank in range(4):
        moved = _one(DEEPEP / "prefill-improper", None, rank, Change(launch_order="proper"))
        proper = _one(DEEPEP / "prefill-proper", None, rank)
        out.append({"rank": rank, "improper_ms": moved["observed_span_us"] / 1e3, "predicted_ms": moved["span_us"] / 1e3,
                    "proper_ms": proper["observed_span_us"] / 1e3})
    return out


def table() -> str:
    rows = no_change_rows()
    lines = ["replay whatif with no change against each capture (per rank): span error, hidden-share error", ""]
    lines += [f"  {r['capture']:<32} rank {r['rank']}: span {r['span_error_pct']:+6.2f}%  hidden "
              f"{r['hidden_error_pts']:+6.2f} pts" for r in rows]
    worst_s = max(abs(r["span_error_pct"]) for r in rows)
    worst_h = max(abs(r["hidden_error_pts"]) for r in rows)
    lines += [f"  worst: span {worst_s:.2f} % (bar {SPAN_BAR_PCT:g} %), hidden {worst_h:.2f} pts (bar {HIDDEN_BAR_PTS:g})",
              "", "improper re-timed in the proper order (DeepEP 4 x H100 prefill), against the observed proper run:"]
    for r in reorder_rows():
        lines.append(f"  rank {r['rank']}: improper {r['improper_ms']:.2f} ms -> predicted {r['predicted_ms']:.2f} ms; "
                     f"observed proper {r['proper_ms']:.2f} ms ({100 * (r['predicted_ms'] / r['proper_ms'] - 1):+.1f} %)")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
    sys.exit(0)
