"""`make validate`, deployment section: `tracegen deploy`'s simulation against published serving
figures, each run under its source's stated settings (the convention line says what is counted and
what is assumed), and the colocated-vs-PD comparison the serving lecture argues. No constant here is
tuned to a row: every run is the default preset's per-step model, stepped by the simulator.

    python -m bench.validate_deploy        # print the tables"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

from tracegen.base.errors import UserError
from tracegen.resolve import resolve_target
from tracegen.serving.deployment import Deployment, PoolPlan, simulate_deployment
from tracegen.serving.metrics import summary
from tracegen.serving.workload import synthetic

from tracegen.catalog import load_hardware
from tracegen.preset import load_preset
from tracegen.resolve import default_backend
from tracegen.stack import load_stack
from tracegen.target import Target

from .labels import Claim


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    hardware: str
    deployment: Deployment
    workload: tuple               # synthetic(requests, rate, input_len, output_len, prefix_hit)
    metric: str                   # "input" | "output": per node, steady
    per: str                      # "node" | "NPU"
    published: float
    target_pct: float
    convention: str
    model: str = "deepseek-v3"
    extra: dict = field(default_factory=dict)
    balanced: bool = False        # the published figure is itself for balanced experts (no EPLB factor)
    dataset: str = ""             # tracegen/data/datasets.toml
    tag: str = "semi-independent"  # the row's label (bench/labels.py)
    datum: str = ""               # the published figure, when another table already counts it
    one_sided: bool = False       # a production average: the check is capacity >= published

    @property
    def phase(self) -> str:
        return "decode" if self.deployment.mode == "decode" else "prefill"

    def claim(self) -> Claim:
        plan = self.deployment.plan_fields
        hw = load_hardware(self.hardware)
        comm = plan.get("comm") or default_backend(load_preset("default"), self.phase, hw)
        rel = (load_stack(self.deployment.stack).release(comm) if self.deployment.stack else "") or \
            hw.backend(comm).release
        return Claim(self.dataset, self.tag, self.hardware, comm, rel, self.model, self.deployment.stack,
                     self.phase, eplb=not self.balanced, datum=self.datum or f"deploy:{self.key}")


SG = "h100-deepgemm"
# the LMSYS blog (2025-05-05, Profile Results): DeepSeek's production (its day-6 post, excluding cache
# hits) against DeepSeek's profile, per node (SGLang's default-placement ratio: bench/validate.py)
DS_PROFILE = {"prefill": 62713.0, "decode": 18598.0}
DS_PRODUCTION = {"prefill": 32206.0, "decode": 14800.0}
# DeepSeek's day-6 post gives no request lengths, but its totals fix the means: 608B input and 168B
# output tokens in the 24 hours (P / D = 608 / 168) and 4,989 tokens of KV cache per output token on
# average (P + D / 2 = 4,989), so P = 4,383 and D = 1,211 (the same derivation as seed
# deepseek_v3_r1_inference_efficiency_analysis.txt, section 2.1: "P ~ 4383, D ~ 1210")
DAY6_KV_PER_OUTPUT, DAY6_IN_OUT = 4989.0, 608.0 / 168.0
_DAY6_D = DAY6_KV_PER_OUTPUT / (DAY6_IN_OUT + 0.5)
DAY6_OUTPUT, DAY6_INPUT = round(_DAY6_D), round(DAY6_IN_OUT * _DAY6_D)
DAY6_LENGTHS = ("the means the post's totals fix: P / D = 608B / 168B tokens and P + D / 2 = 4,989 tokens of KV per "
                "output token")
ROWS = (
    Row("sglang-prefill", "SGLang 96xH100 DeepSeek-R1, prefill pool (4 nodes, EP32)", SG,
        Deployment("prefill", prefill=PoolPlan(4, 1, 32), stack="sglang-2025-05"),
        (4096, None, 2000, 1, 0.0), "input", "node", 52300, 15,
        "2,000-token inputs, every request at t = 0 (the blog: 'we independently evaluated the prefill (P) and decode "
        "(D) phases, assuming unlimited resources for the non-tested phase'); 16,384 tokens per GPU per step; "
        "DeepGEMM; simulated with balanced experts, times the stack's default-placement factor", dataset="lmsys-2025-05", datum="sglang-prefill"),
    Row("sglang-decode", "SGLang 96xH100 DeepSeek-R1, decode pool (9 nodes, EP72)", SG,
        Deployment("decode", decode=PoolPlan(9, 1, 72), max_batch=256, plan_fields={"redundant_experts": 32},
                   stack="sglang-2025-05"),
        (72 * 256 * 2, None, 2000, 100, 0.0), "output", "node", 22300, 15,
        "2,000-token inputs, 100 output tokens, 256 requests per GPU (the blog's decode setting), KV in place at "
        "t = 0; 32 redundant experts, balanced (the default placement's decode cost is not published), no MTP; "
        "DeepGEMM masked", dataset="lmsys-2025-05", datum="sglang-decode"),
    Row("kimi-prefill", "SGLang 128xH200 Kimi-K2, prefill pool (4 nodes, EP32; split assumed)", "h200",
        Deployment("prefill", prefill=PoolPlan(4, 1, 32), stack="sglang-2025-07"),
        (4096, None, 2000, 1, 0.0), "input", "node", 56000, 15,
        "the SGLang slides' 56k / node, measured like R1's (each phase alone, the other given unlimited resources); "
        "balanced experts (no placement cost is published for Kimi-K2's 384 experts); 4 prefill nodes of the 16 (the "
        "Kimi-K2 deployment post: 4 prefill + 12 decode nodes); 2,000-token inputs assumed", model="kimi-k2", dataset="sglang-kimi-slides"),
    Row("kimi-decode", "SGLang 128xH200 Kimi-K2, decode pool (12 nodes, EP96; split assumed)", "h200",
        Deployment("decode", decode=PoolPlan(12, 1, 96), max_batch=480, plan_fields={"redundant_experts": 96},
                   stack="sglang-2025-07"),
        (96 * 480 * 2, None, 2000, 100, 0.0),
        "output", "node", 24000, 15,
        "the slides' 24.0k / node; the Kimi-K2 deployment post's 12 decode nodes, decode batch 480 (read as requests "
        "per GPU: assumed) and 96 redundant experts; 2,000 + 100 tokens assumed as for R1", model="kimi-k2", dataset="sglang-kimi-slides"),
    Row("ds-prefill", "DeepSeek V3/R1 service (day-6 post), prefill (4 nodes, EP32)", "h800",
        Deployment("prefill", prefill=PoolPlan(4, 1, 32), stack="deepseek-2025-02"),
        (4096, None, DAY6_INPUT, 1, 0.563), "input", "node", 73700, 15,
        "a 24-hour average per node, cache hits counted (56.3 % of input tokens); prompts of "
        f"{DAY6_INPUT:,} tokens ({DAY6_LENGTHS}), the pool at full load", dataset="deepseek-day6", one_sided=True),
    Row("ds-decode", "DeepSeek V3/R1 service (day-6 post), decode (18 nodes, EP144) at 20-22 tokens/s per user",
        "h800", Deployment("decode", decode=PoolPlan(18, 1, 144), slo_tpot_ms=1000 / 21,
                           plan_fields={"redundant_experts": 32, "mtp": 1, "mtp_accept": 0.85},
                           stack="deepseek-2025-02"),
        (144 * 256, None, DAY6_INPUT, DAY6_OUTPUT, 0.0), "output", "node", 14800, 15,
        "a 24-hour average per node; the batch capped where TPOT = 1/21 s (the post's 20-22 tokens/s per user); "
        "MTP 1 draft at 85 % acceptance (DeepSeek-V3 report: 85-90 %); "
        f"{DAY6_INPUT:,}-token prompts and {DAY6_OUTPUT:,} output tokens ({DAY6_LENGTHS}); 32 redundant experts", dataset="deepseek-day6", one_sided=True),
    Row("cm-prefill", "CloudMatrix384 DeepSeek-R1 prefill (16 NPUs = 32 dies, EP32), perfect EPLB", "ascend-910c",
        Deployment("prefill", prefill=PoolPlan(2, 1, 32), plan_fields={"comm": "ascend-fused"},
                   stack="cloudmatrix-2025-06"),
        (4096, None, 4096, 1, 0.0), "input", "NPU", 6688, 20,
        "4K inputs, the pool at full load, INT8, the paper's fused dispatch / combine; a rank is a die, per NPU = "
        "per 910C package (2 dies)", dataset="cloudmatrix-paper", datum="paper-prefill"),
    Row("cm-decode-50", "CloudMatrix384 DeepSeek-R1 decode (160 NPUs = 320 dies, EP320), TPOT < 50 ms",
        "ascend-910c", Deployment("decode", decode=PoolPlan(20, 1, 320), slo_tpot_ms=50,
                                  plan_fields={"redundant_experts": 64, "mtp": 1, "mtp_accept": 0.7},
                                  stack="cloudmatrix-2025-06"),
        (320 * 96, None, 4096, 600, 0.0), "output", "NPU", 1943, 20,
        "4K KV, MTP 1 draft at 70 % acceptance, one expert per die (256 routed + 64 extra), the batch capped by "
        "TPOT < 50 ms, per NPU = per package (2 dies)", dataset="cloudmatrix-paper", datum="paper-50"),
    Row("cm-decode-15", "CloudMatrix384 DeepSeek-R1 decode (160 NPUs = 320 dies, EP320), TPOT < 15 ms",
        "ascend-910c", Deployment("decode", decode=PoolPlan(20, 1, 320), slo_tpot_ms=15,
                                  plan_fields={"redundant_experts": 64, "mtp": 1, "mtp_accept": 0.7,
                                               "microbatches": 1}, stack="cloudmatrix-2025-06"),
        (320 * 16, None, 4096, 600, 0.0), "output", "NPU", 538, 20,
        "as above with TPOT < 15 ms; one micro-batch (at a few requests per die a split reads every weight twice)", dataset="cloudmatrix-paper", datum="paper-15"),
)


@lru_cache(maxsize=None)
def _target(hardware: str, model: str):
    return resolve_target(model, hardware=hardware)


def measure(row: Row) -> dict[str, Any]:
    model, hw, preset = _target(row.hardware, row.model)
    d = replace(row.deployment, gpus_per_node=hw.gpus_per_node)
    w = synthetic(*row.workload)
    try:
        r = simulate_deployment(model, hw, preset, d, w)
    except UserError as exc:          # e.g. a TPOT target the model cannot reach at any batch
        return {"key": row.key, "label": row.label, "published": row.published, "predicted": None,
                "error_pct": None, "target_pct": row.target_pct, "per": row.per, "note": str(exc)}
    s = summary(r)
    pool = s["pools"][0]
    per_node = pool[f"{row.metric}_tokens_per_s_per_node_steady"]      # the stack's EPLB factor applied inside
    got = per_node / (hw.gpus_per_node / hw.dies_per_package) if row.per == "NPU" else per_node
    return {"key": row.key, "label": row.label, "published": row.published, "predicted": got,
            "error_pct": 100 * (got / row.published - 1), "target_pct": row.target_pct, "per": row.per,
            "tpot_ms": pool.get("step_tpot_ms"), "batch_per_dp": pool.get("mean_batch_per_dp"),
            "cap": r.pools[0].max_batch or None}


def day6_capacity() -> dict[str, float]:
    """DeepSeek's profiled capacity (the LMSYS blog's table), simulated under the profile's own settings:
    prefill 4 nodes EP32 at 16,384 tokens of 4,096-token prompts per GPU, no cache hits; decode 16 nodes
    EP128 at 128 requests per GPU, 4,096 tokens of KV, no MTP credited (InferSim's reading of the same
    profile); both with InferSim's scheduler convention and DeepEP as in Feb 2025."""
    pre = Row("profile-prefill", "", "h800",
              Deployment("prefill", prefill=PoolPlan(4, 1, 32), stack="deepseek-2025-02"),
              (4096, None, 4096, 1, 0.0), "input", "node", DS_PROFILE["prefill"], 0, "")
    dec = Row("profile-decode", "", "h800",
              Deployment("decode", decode=PoolPlan(16, 1, 128), max_batch=128, stack="deepseek-2025-02"),
              (128 * 128 * 4, None, 4032, 128, 0.0), "output", "node", DS_PROFILE["decode"], 0, "")
    return {"prefill": measure(pre)["predicted"], "decode": measure(dec)["predicted"]}


# DeepSeek's day-6 post: 608B input tokens (56.3 % of them cache hits) and 168B output tokens in 24 hours on
# 226.75 nodes on average, each user served at 20-22 tokens/s
DAY6_TOKENS = {"input": 608e9, "output": 168e9}
DAY6_NODES, DAY6_TPS_USER = 226.75, (20.0, 22.0)


def day6_checks() -> dict[str, float]:
    """The day-6 figures as well-posed checks: the fleet utilisation the simulated capacities imply for the
    day's tokens on the average node count (must not exceed 1), and tokens/s per user at DeepSeek's
    profiled decode batch (128 requests per GPU, MTP 1 at 85 %, EP128, 4K context; against 20-22)."""
    rows = {r.key: r for r in ROWS}
    pre, dec = measure(rows["ds-prefill"])["predicted"], measure(rows["ds-decode"])["predicted"]
    node_s = DAY6_TOKENS["input"] / pre + DAY6_TOKENS["output"] / dec
    from tracegen.catalog import load_model
    from tracegen.pipeline import TraceOptions, schedule
    from tracegen.plan import Plan
    hw, model = load_hardware("h800"), load_model("deepseek-v3")
    plan = load_stack("deepseek-2025-02").apply(
        Plan(phase="decode", batch=128, seq_len=4096, dp=128, comm="ibgda", mtp=1, mtp_accept=0.85), hw)
    step = schedule(Target(model, hw, load_preset("default"), plan), TraceOptions(tbo="proper", launch_us=0.0))
    return {"utilisation": node_s / (DAY6_NODES * 86400), "prefill_per_node": pre, "decode_per_node": dec,
            "tps_user": plan.accepted_per_request / (step.span_us / 1e6), "step_ms": step.span_us / 1e3}


MTP_REPORTED = 1.8      # the CloudMatrix384 paper: MTP's decode throughput gain


def mtp_gain() -> dict[str, float]:
    """CloudMatrix384's reported 1.8x decode throughput from MTP: the TPOT < 50 ms row with MTP off."""
    row = next(r for r in ROWS if r.key == "cm-decode-50")
    off = replace(row, deployment=replace(row.deployment, plan_fields={"redundant_experts": 64}))
    on, base = measure(row)["predicted"], measure(off)["predicted"]
    return {"with_mtp": on, "without_mtp": base, "gain": on / base}


def pd_vs_colocated(rate: float = 25.0) -> list[dict[str, Any]]:
    """The lecture's argument with numbers: 6 H800 nodes, Poisson load, 2,000 + 200 tokens."""
    model, hw, preset = _target("h800", "deepseek-v3")
    w = synthetic(1500, rate, 2000, 200, seed=2)
    out = []
    for d in (Deployment("pd", PoolPlan(2, 1, 16), PoolPlan(4, 1, 32)), Deployment("colocated", PoolPlan(6, 1, 48))):
        s = summary(simulate_deployment(model, hw, preset, d, w))
        out.append({"plan": d.label(), "ttft_p50": s["ttft_ms"]["p50"], "ttft_p90": s["ttft_ms"]["p90"],
                    "tpot_p50": s["tpot_ms"]["p50"], "tpot_p90": s["tpot_ms"]["p90"], "e2e_p50": s["e2e_ms"]["p50"]})
    return out


def render() -> str:
    lines = ["Deployments (`tracegen deploy`; throughput in the steady state: every request at t = 0, while work "
             "waited for the pool, i.e. it ran full; tracegen/serving/metrics.py). "
             "Settings per row:", ""]
    lines += [f"- {r.label}: {r.published:,.0f} tokens/s per {r.per}. {r.convention}." for r in ROWS]
    lines += ["", "The label says how independent each row is of the constants it runs on (tracegen/ledger.py); a "
              "row whose figure another table already checks names it (a datum is counted once). DeepSeek's day-6 "
              "figures are 24-hour production averages, so their check is one-sided: the simulated capacity must "
              "not fall below them.", "",
              "| row | label | published | predicted | error | target | decode step / token ms | decode batch / DP |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r, m in ((r, measure(r)) for r in ROWS):
        lab = r.tag + (f" (same datum as `{r.datum}`)" if r.datum else "")
        if m["predicted"] is None:
            lines.append(f"| {m['label']} | {lab} | {m['published']:,.0f} / {m['per']} | - | - | within "
                         f"{m['target_pct']:g}%: **no** ({m['note']}) | - | - |")
            continue
        if r.one_sided:
            target = f"capacity >= published: {'yes' if m['predicted'] >= m['published'] else '**no**'}"
        else:
            target = f"within {m['target_pct']:g}%: {'yes' if abs(m['error_pct']) <= m['target_pct'] else '**no**'}"
        tpot = f"{m['tpot_ms']:.1f}" if m["tpot_ms"] else "-"
        batch = f"{m['cap'] or m['batch_per_dp']:.0f}" if (m["cap"] or m["batch_per_dp"]) else "-"
        lines.append(f"| {m['label']} | {lab} | {m['published']:,.0f} / {m['per']} | {m['predicted']:,.0f} | "
                     f"{m['error_pct']:+.1f}% | {target} | {tpot} | {batch} |")
    g = mtp_gain()
    lines += ["", "(The decode batch is the KV cache's limit, the row's cap, or the TPOT target's, whichever is least.)"]
    cap = day6_capacity()
    lines += ["", "DeepSeek's day-6 figures are production averages, not capacity. Against the capacity DeepSeek "
              f"profiled (the LMSYS blog's table, per node: prefill {DS_PROFILE['prefill']:,.0f} tokens/s excluding "
              f"cache hits, decode {DS_PROFILE['decode']:,.0f}; production {DS_PRODUCTION['prefill']:,.0f} and "
              f"{DS_PRODUCTION['decode']:,.0f}, i.e. "
              f"{100 * DS_PRODUCTION['prefill'] / DS_PROFILE['prefill']:.0f} % and "
              f"{100 * DS_PRODUCTION['decode'] / DS_PROFILE['decode']:.0f} % of it), the pools simulated under the "
              "profile's settings (prefill: 16,384 tokens of 4,096-token prompts per GPU, no cache hits; decode: 16 "
              "nodes EP128, 128 requests per GPU at 4,096 tokens of KV, no MTP credited) give "
              f"{cap['prefill']:,.0f} prefill tokens/s per node "
              f"({100 * (cap['prefill'] / DS_PROFILE['prefill'] - 1):+.1f} %) and {cap['decode']:,.0f} decode "
              f"({100 * (cap['decode'] / DS_PROFILE['decode'] - 1):+.1f} %): the same profile as the step-throughput "
              f"table's DeepSeek rows ({DS_PROFILE['prefill'] / 8:,.0f} and {DS_PROFILE['decode'] / 8:,.0f} per GPU), a "
              "consistency check, not counted again."]
    c = day6_checks()
    lo, hi = DAY6_TPS_USER
    lines += ["", "DeepSeek's day-6 totals as checks (label: semi-independent, dataset `deepseek-day6`): the day's "
              f"{DAY6_TOKENS['input'] / 1e9:,.0f}B input and {DAY6_TOKENS['output'] / 1e9:,.0f}B output tokens at the "
              f"simulated capacities above ({c['prefill_per_node']:,.0f} and {c['decode_per_node']:,.0f} tokens/s per "
              f"node) need {100 * c['utilisation']:.0f} % of {DAY6_NODES:g} nodes for 24 hours (must not exceed 100 %: "
              f"{'yes' if c['utilisation'] <= 1 else '**no**'}); at DeepSeek's profiled decode batch (128 requests per "
              f"GPU, MTP 1 at 85 %) a step takes {c['step_ms']:.1f} ms, {c['tps_user']:.1f} tokens/s per user "
              f"(reported {lo:g}-{hi:g}: {'within' if lo <= c['tps_user'] <= hi else '**outside**'})."]
    lines += ["", f"MTP on CloudMatrix384 decode (TPOT < 50 ms): {g['with_mtp']:,.0f} tokens/s per NPU with one "
                  f"draft at 70 % acceptance vs {g['without_mtp']:,.0f} without: x{g['gain']:.2f} (reported: "
                  f"x{MTP_REPORTED:g}; error {100 * (g['gain'] / MTP_REPORTED - 1):+.1f} %, no target set).",
              "", "Colocated vs PD on 6 H800 nodes, 25 requests/s of 2,000 + 200 tokens (the lecture's argument: "
                  "prompts interrupt decoding in a shared pool):", "",
              "| plan | TTFT p50 ms | TTFT p90 ms | TPOT p50 ms | TPOT p90 ms | end to end p50 s |",
              "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {x['plan']} | {x['ttft_p50']:,.0f} | {x['ttft_p90']:,.0f} | {x['tpot_p50']:.1f} | {x['tpot_p90']:.1f} "
              f"| {x['e2e_p50'] / 1e3:.2f} |" for x in pd_vs_colocated()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render())
    sys.exit(0)
