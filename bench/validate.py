"""`make validate`: the default preset against published figures, each row run under the counting
convention of its source (stated in the first table), with no constant tuned to a row.

    python -m bench.validate             # print the tables
    python -m bench.validate --readme    # ... and rewrite docs/validation.md's generated section with them

Tables: (1) the convention of every published row; (2) step throughput per GPU, predicted as the
scheduled timeline of one whole step (61 layers, two micro-batches, the LM head, MTP drafting,
the row's scheduler time); (3) per stage: DeepSeek's decode profile kernel table, DeepSeek's
train.json forward chunk (when ../shared is present) and the DeepEP / H100 captures committed in
traces/observed. Each constant the predictions use names its source in tracegen/data/hardware.toml."""
from __future__ import annotations

import csv
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from tracegen.catalog import load_hardware, load_model
from tracegen.cost import op_time
from tracegen.ops import layer_ops
from tracegen.pipeline import TraceOptions, schedule
from tracegen.plan import Plan
from tracegen.preset import load_preset
from tracegen.schedule import Schedule
from tracegen.stack import load_stack
from tracegen.target import Target

from .labels import Claim, claim

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference"
README = ROOT / "docs" / "validation.md"      # the page the tables live on (README links to it)
BEGIN, END = "<!-- validate:begin (make validate writes this section) -->", "<!-- validate:end -->"
DEFAULT = load_preset("default")
MODEL = load_model("deepseek-v3")


@dataclass(frozen=True)
class Row:
    """One published throughput, the serving stack it was produced under and the convention it is counted
    under. The stack (tracegen/data/stacks.toml) sets the all-to-all release, the scheduler term and the
    default expert placement's cost; a row never picks one of its own."""
    key: str
    label: str
    hardware: str
    plan: Plan
    published: float           # tokens/s per GPU
    tokens_per_step: float      # per GPU, as the source counts them
    convention: str
    target_pct: float           # the bar for this row
    stack: str
    dataset: str
    tag: str                    # the row's label (bench/labels.py checks it against the fit ledger)
    balanced: bool = False      # the published figure is itself for balanced experts (no EPLB factor)

    def plan_under_stack(self) -> Plan:
        return load_stack(self.stack).apply(self.plan, load_hardware(self.hardware))

    @property
    def factor(self) -> float:
        """The stack's default expert placement relative to balanced experts (1 for a balanced figure)."""
        return 1.0 if self.balanced else load_stack(self.stack).eplb[self.plan.phase]

    def step(self) -> Schedule:
        return schedule(Target(MODEL, load_hardware(self.hardware), DEFAULT, self.plan_under_stack()),
                        TraceOptions(tbo="proper"))

    def claim(self) -> Claim:
        return claim(self.dataset, self.tag, self.hardware, self.plan_under_stack(), stack=self.stack,
                     eplb=not self.balanced, datum=self.key)


from .stagesum import SGLANG_PREFILL_PERFECT, stage_sums  # noqa: E402 (shared, see there)

ROWS = (
    Row("ds-prefill", "DeepSeek profile prefill, EP32, 4K prompts (InferSim-derived actual)", "h800",
        Plan(phase="prefill", batch=4, seq_len=4096, dp=32, comm="normal"), 7839.0, 16384,
        "16,384 prompt tokens per GPU per step (2 micro-batches of 8,192), no cache hits", 5.0, "deepseek-2025-02",
        "deepseek-profile-prefill", "semi-independent"),
    Row("ds-decode", "DeepSeek profile decode, EP128, 4K context (InferSim-derived actual)", "h800",
        Plan(phase="decode", batch=128, seq_len=4096, dp=128, comm="ibgda"), 2324.0, 128,
        "128 tokens per GPU per step (128 requests, 2 micro-batches of 64, no MTP credited)", 5.0,
        "deepseek-2025-02", "deepseek-profile-decode", "semi-independent"),
    Row("sglang-prefill-perfect", "SGLang 96xH100 DeepSeek-V3 prefill: EP32, 4K prompts, simulated perfect EPLB",
        "h100-deepgemm", Plan(phase="prefill", batch=4, seq_len=4096, dp=32, comm="normal"),
        SGLANG_PREFILL_PERFECT / 8, 16384,
        "59,337 tokens/s per node / 8, the LMSYS blog's own comparable setting (2025-05-05, 'Profile Results' table): "
        "16,384 tokens per GPU per step, 4,096-token prompts, random group-limited routing, perfect EPLB; DeepGEMM "
        "kernels", 10.0, "sglang-2025-05", "lmsys-2025-05", "semi-independent", balanced=True),
    Row("sglang-prefill", "SGLang 96xH100 DeepSeek-R1 prefill: 4 nodes EP32, 2,000-token inputs, default EPLB",
        "h100-deepgemm", Plan(phase="prefill", batch=16384 / 2000, seq_len=2000, dp=32, comm="normal"),
        52300.0 / 8, 16384,
        "52.3k input tokens/s per node / 8 (the blog's headline; its evaluation section says 54,543); balanced "
        "experts simulated at 2,000-token prompts, times the stack's default-placement factor (the blog's 4K "
        "ratio)", 10.0, "sglang-2025-05", "lmsys-2025-05", "semi-independent"),
    Row("sglang-decode", "SGLang 96xH100 DeepSeek-R1 decode: 9 nodes EP72, 2,000 + 100 context", "h100-deepgemm",
        Plan(phase="decode", batch=256, seq_len=2050, dp=72, redundant_experts=32, comm="ibgda", decode_len=100),
        22300.0 / 8, 256,
        "22.3k output tokens/s per node / 8 (the blog: 22,282 at 256 requests per GPU, 2,000-token inputs); 32 "
        "redundant experts, no MTP, DeepGEMM kernels", 10.0, "sglang-2025-05", "lmsys-2025-05", "semi-independent"),
)

# DeepSeek's decode profile as tabulated per kernel (../shared/reference/deepseek_decode_profile_kernels.csv):
# 128 requests per GPU with one MTP draft token = 128 tokens per micro-batch; the step (96 ms, a profiled
# wall step) under the same 5 ms scheduler convention as the decode throughput row
DECODE_TABLE_STACK = "deepseek-2025-02"
DECODE_TABLE_PLAN = load_stack(DECODE_TABLE_STACK).apply(
    Plan(phase="decode", batch=128, seq_len=4096, dp=128, comm="ibgda", mtp=1), load_hardware("h800"))
DECODE_STAGES = {     # the table's stage -> the cost model's ops (one micro-batch)
    "flashmla_core_attention": ("attn_core",),
    "ll_dispatch": ("dispatch",),
    "ll_combine": ("combine",),
    "expert_gemm_up": ("routed_up",),
    "expert_gemm_down": ("routed_down",),
    "o_proj_chain": ("o_absorb", "o_quant", "mla_out"),
    "attn0_small_kernels": ("attn_glue", "mla_proj", "q_absorb"),
    "gate": ("gate", "routing"),
}
STAGE_TARGET_PCT = 10.0


# The claim of each table whose rows share one dataset (bench/labels.py; tests/test_ledger.py checks them)
TABLE_CLAIMS = {
    "decode-table": Claim("deepseek-profile-decode", "semi-independent", "h800", "ibgda", "first",
                          stack="deepseek-2025-02", phase="decode"),
    "train-json-gemms": Claim("deepseek-train-json", "semi-independent", "h800", phase="prefill"),
    "train-json-comm": Claim("deepseek-train-json", "consistency", "h800", "normal", "profile"),
    "deepep-h100x4": Claim("deepep-h100x4", "in-sample", "h100", "intranode"),
    "ascend-fused": Claim("cloudmatrix-paper", "consistency", "ascend-910c", "ascend-fused", "paper", phase="decode"),
    "ascend-slides": Claim("jiusi-slides", "in-sample", "ascend-910c", "ascend-fused", "paper", phase="decode"),
    "ascend-paper": Claim("cloudmatrix-paper", "semi-independent", "ascend-910c", "ascend-fused", "paper",
                          stack="cloudmatrix-2025-06", phase="decode"),
    "tbo-ablation": Claim("lmsys-2025-05", "semi-independent", "h100-deepgemm", "normal", "latest",
                          stack="sglang-2025-05"),
    "h100-capture": Claim("h100-sweep", "in-sample", "h100", "pcie-copy"),
}


def tag(table: str) -> str:
    """The label line printed under a table's caption."""
    c = TABLE_CLAIMS[table]
    return f"Label: {c.label} (dataset `{c.dataset}`)."


SCHED_RANGE_MS = {"prefill": (0.0, 30.0), "decode": (0.0, 5.0)}    # the stacks' stated range (stacks.toml)


def _tokens_per_s(r: Row, plan: Plan) -> float:
    s = schedule(Target(MODEL, load_hardware(r.hardware), DEFAULT, plan), TraceOptions(tbo="proper"))
    return r.tokens_per_step / (s.span_us / 1e3) * 1e3 * r.factor


def sensitivity(r: Row) -> list[tuple[str, float]]:
    """The row's error under the plausible alternatives to its stack's choices: every other release of
    its all-to-all backend, the scheduler term's range, and balanced experts where the stack's factor
    is not 1."""
    plan, hw = r.plan_under_stack(), load_hardware(r.hardware)
    out = []
    for rel in hw.backend(plan.comm).releases:
        if rel != plan.comm_release:
            out.append((rel, 100 * (_tokens_per_s(r, replace(plan, comm_release=rel)) / r.published - 1)))
    for ms in SCHED_RANGE_MS[plan.phase]:
        if ms != plan.sched_ms:
            out.append((f"sched {ms:g} ms", 100 * (_tokens_per_s(r, replace(plan, sched_ms=ms)) / r.published - 1)))
    if r.factor != 1.0:
        out.append(("balanced", 100 * (_tokens_per_s(r, plan) / r.factor / r.published - 1)))
    return out


def throughput_rows(with_sensitivity: bool = False) -> list[dict]:
    out = []
    for r in ROWS:
        s = r.step()
        step_ms = s.span_us / 1e3          # from the scheduler slice (if any) to the last kernel
        got = r.tokens_per_step / step_ms * 1e3 * r.factor
        plan = r.plan_under_stack()
        out.append({"key": r.key, "label": r.label, "published": r.published, "predicted": got,
                    "error_pct": 100 * (got / r.published - 1), "step_ms": step_ms, "target_pct": r.target_pct,
                    "power": s.power, "stack": r.stack, "release": plan.comm_release, "sched_ms": plan.sched_ms,
                    "factor": r.factor, "tag": r.tag, "dataset": r.dataset,
                    "sensitivity": sensitivity(r) if with_sensitivity else []})
    return out


def decode_table_rows(reference: Path = REFERENCE) -> list[dict]:
    """Per stage of one micro-batch, and the 61 layers and whole step, against the kernel table."""
    with (reference / "deepseek_decode_profile_kernels.csv").open() as f:
        published = {r["stage"]: float(r["us_per_microbatch"]) for r in csv.DictReader(f)}
    hw = load_hardware("h800")
    mb = replace(DECODE_TABLE_PLAN.split(2), imbalance=1.0)
    got = stage_sums(DECODE_STAGES, mb, hw)
    out = [{"stage": st, "published_us": published[st], "predicted_us": got[st]} for st in DECODE_STAGES]
    s = schedule(Target(MODEL, hw, DEFAULT, DECODE_TABLE_PLAN), TraceOptions(tbo="proper"))
    gpu = [i for i in s.intervals if i.key is not None]
    layers_end = max(i.end for i in gpu if i.key[0] < MODEL.layers)
    out.append({"stage": "layers_61_total", "published_us": published["layers_61_total_ms"] * 1e3,
                "predicted_us": layers_end - min(i.start for i in gpu if i.track != "cpu")})
    out.append({"stage": "step_total", "published_us": published["step_total_ms"] * 1e3, "predicted_us": s.span_us})
    for r in out:
        r["error_pct"] = 100 * (r["predicted_us"] / r["published_us"] - 1)
    return out


ASCEND_FUSED = (("dispatch", 8, 116.0), ("dispatch", 256, 152.0), ("combine", 8, 118.0))   # CloudMatrix384 paper
# (combine at EP256 is the catalog's assumption, not a published point: not a row here)


def ascend_fused_rows() -> list[dict]:
    """FusedDispatch / FusedCombine at the paper's EP sizes, 128 tokens per rank (the `paper` release)."""
    hw = load_hardware("ascend-910c")
    out = []
    for op, ep, published in ASCEND_FUSED:
        plan = Plan(phase="decode", batch=128, seq_len=4096, dp=ep, comm="ascend-fused", precision="int8")
        w = next(w for w in layer_ops(Target(MODEL, hw, DEFAULT, plan), dense=False) if w.name == op)
        us = op_time(w, plan, hw, DEFAULT).us
        out.append({"op": op, "ep": ep, "published_us": published, "predicted_us": us,
                    "error_pct": 100 * (us / published - 1)})
    return out


def h100_capture_rows() -> list[dict]:
    """The single-H100 layer capture (traces/observed/h100) per stage: median |error| over its layers."""
    from replay.analyze import analyze, analyze_one_step
    from replay.compare import compare
    from replay.stagerules import load_stage_rules
    obs_dir = ROOT / "traces" / "observed" / "h100"
    plan = Plan(phase="prefill", batch=2, seq_len=4096, dp=32, comm="pcie-copy", routing="spread")
    tax = str(obs_dir / "taxonomy.toml")
    with tempfile.TemporaryDirectory() as d:
        pred = Path(d) / "pred.json.gz"
        from tracegen.trace import write_trace
        sched = schedule(Target(MODEL, load_hardware("h100"), DEFAULT, plan),
                         TraceOptions(tbo="proper", layers=4, skip_dense=True))
        write_trace(sched, pred, {"tbo": "proper"})
        res = compare(analyze(pred, use_cache=False),
                      analyze_one_step(str(obs_dir / "layers-proper.json.gz"), None, taxonomy=tax, use_cache=False)[0],
                      load_stage_rules(None))
    return [{"stage": s["stage"], "n": int(s["n"]), "median_abs_error_pct": float(s["median_abs_error_pct"])}
            for _, s in res["summary"].iterrows()]


# The LMSYS blog's TBO ablation (2025-05-05, "Ablation Study: Two-batch Overlap"): throughput with TBO
# over without, same tokens per device. Prefill: "a 27% to 35% throughput increase compared to the
# vanilla setup, even when processing the same token count per device" (8,192 tokens, the most the
# vanilla run holds). Decode: "The speedup reaches 25.5% at 256 tokens with a performance of 22,310
# tokens per second" and "-27% at 32 tokens/device". And TBO's memory saving: "each device processes up
# to 8,192 tokens before encountering out-of-memory (OOM) errors at 16,384 tokens. TBO mitigates this ...
# This further boosts performance to 40.5% increase when comparing the TBO flag with all other
# configurations made optimal". Both sides run under the row's one stack (one DeepEP release); what the
# blog names - DeepEP slower beside the GEMMs it overlaps than in its unit test - is the scheduler's
# in-situ term (hardware.toml [hopper.in_situ]), which only the overlapped side pays.
TBO_ABLATION = (     # label, row, requests (prefill: 4K prompts) per GPU with / without TBO, published
    ("SGLang prefill, 8,192 tokens per GPU (2 x 4K prompts), EP32", "sglang-prefill-perfect", (2, 2), (1.27, 1.35)),
    ("SGLang prefill, 16,384 tokens per GPU with TBO vs 8,192 without (the most it holds)", "sglang-prefill-perfect",
     (4, 2), (1.405, 1.405)),
    ("SGLang decode, 256 requests per GPU, EP72", "sglang-decode", (256, 256), (1.255, 1.255)),
    ("SGLang decode, 32 requests per GPU, EP72", "sglang-decode", (32, 32), (0.73, 0.73)),
)


def tbo_ablation_rows() -> list[dict]:
    """Throughput with two-batch overlap over without (one scheduled step each, one stack both sides)."""
    rows = {r.key: r for r in ROWS}
    out = []
    for label, key, (b_on, b_off), published in TBO_ABLATION:
        r = rows[key]
        hw = load_hardware(r.hardware)
        plan = r.plan_under_stack()
        on = schedule(Target(MODEL, hw, DEFAULT, replace(plan, batch=b_on)), TraceOptions(tbo="proper"))
        off = schedule(Target(MODEL, hw, DEFAULT, replace(plan, batch=b_off, microbatches=1)), TraceOptions(tbo="off"))
        speedup = (b_on / on.span_us) / (b_off / off.span_us)
        lo, hi = published
        err = 0.0 if lo <= speedup <= hi else 100 * (speedup / (lo if speedup < lo else hi) - 1)
        out.append({"label": label, "published": published, "predicted": speedup, "error_pct": err,
                    "on_ms": on.span_us / 1e3, "off_ms": off.span_us / 1e3, "stack": r.stack,
                    "release": plan.comm_release, "phase": plan.phase, "backend": plan.comm,
                    "latency_us": hw.backend(plan.comm).latency_us,
                    "a2a_on_us": _a2a_us(on), "a2a_off_us": _a2a_us(off)})
    return out


def _a2a_us(s: Schedule) -> float:
    """Rank 0's dispatch + combine time for one micro-batch of a middle layer (the schedule's own stage times)."""
    layer = s.graph.layers[len(s.graph.layers) // 2]
    return sum(s.end[(0, k)] - s.start[(0, k)] for k in ((layer, 0, "DISPATCH"), (layer, 0, "COMBINE"))
               if (0, k) in s.start)


TBO_BAR_PCT = 10.0        # issue 28: each ablation row within 10 % of its published figure


def _tbo_miss_notes(rows: list[dict]) -> list[str]:
    """A line per decode row outside its published figure: what the split costs in the all-to-all. Seen after
    the row missed, so it names a likely cause and changes nothing."""
    missed = [t for t in rows if t["phase"] == "decode" and abs(t["error_pct"]) > TBO_BAR_PCT]
    if not missed:
        return []
    from .heldout import rows as heldout_rows
    floor = heldout_rows(lambda k: k.startswith("pplx-") and "-1tok-" in k and "-ibrc-" not in k)
    out = []
    for t in missed:
        out.append(f"- {t['label']}: {t['error_pct']:+.1f}% (bar {TBO_BAR_PCT:g} %), not re-tuned. Each "
                   f"micro-batch's dispatch + combine takes {t['a2a_on_us']:.1f} us per layer, "
                   f"{2 * t['latency_us']:g} us of it the {t['backend']} backend's fixed part ({t['latency_us']:g} us "
                   f"a kernel, assumed in hardware.toml), twice a layer, against {t['a2a_off_us']:.1f} us once for "
                   "the whole batch: the split pays the fixed part twice. The "
                   "held-out pplx-kernels rows at one token per GPU over NVLink and IBGDA (`python -m bench.heldout`) "
                   f"take {min(r['published'] for r in floor):.1f}-{max(r['published'] for r in floor):.1f} us where "
                   f"that fixed part predicts {min(r['predicted'] for r in floor):.1f}-"
                   f"{max(r['predicted'] for r in floor):.1f}, so the fixed part is likely short, which would make "
                   "TBO at small batches look cheaper than measured. A likely cause, seen after the miss: no "
                   "constant was changed for it.")
    return out


def render() -> str:
    lines = ["Counting conventions (what each published row counts, and the serving stack it runs under: "
             "tracegen/data/stacks.toml sets the DeepEP release, the scheduler term and the default expert "
             "placement's cost; no row picks one of its own):", ""]
    lines += [f"- {r.label}: {r.published:,.0f} tokens/s per GPU. {r.convention}. Stack `{r.stack}`." for r in ROWS]
    lines += ["", "Step throughput, tokens/s per GPU (one scheduled step: 61 layers x 2 micro-batches, LM head, "
              "scheduler slice; the draw is the step's mean power at the boost clock against the 700 W limit, and "
              "the clock drop it sets, tracegen/power.py). The label says how independent the row is of the "
              "constants it runs on (tracegen/ledger.py); the last column gives the error under the alternatives "
              "to the stack's choices:", "",
              "| row | label | published | predicted | error | target | step ms | draw W (throttle) | stack: release, "
              "sched ms, EPLB | error under alternatives |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for t in throughput_rows(with_sensitivity=True):
        ok = "yes" if abs(t["error_pct"]) <= t["target_pct"] else "**no**"
        p = t["power"]
        alt = ", ".join(f"{k} {e:+.1f}%" for k, e in t["sensitivity"])
        lines.append(f"| {t['label']} | {t['tag']} | {t['published']:,.0f} | {t['predicted']:,.0f} | "
                     f"{t['error_pct']:+.1f}% | within {t['target_pct']:g}%: {ok} | {t['step_ms']:,.1f} | "
                     f"{p.demand_w:,.0f} ({p.throttle:.2f}) | {t['stack']}: {t['release']}, {t['sched_ms']:g}, "
                     f"{t['factor']:.3f} | {alt} |")
    from .heldout import table as heldout_table
    lines += ["", heldout_table()]
    if (REFERENCE / "deepseek_decode_profile_kernels.csv").exists():
        lines += ["", "DeepSeek decode profile per stage (128 requests per GPU + 1 MTP draft = 128 tokens per "
                  "micro-batch; EP128, 4K context, H800, DeepEP first release; the step with the LM heads, the MTP "
                  "module and 5 ms of scheduling). " + tag("decode-table"), "",
                  "| stage | published us | predicted us | error |", "|---|---:|---:|---:|"]
        lines += [f"| {r['stage']} | {r['published_us']:,.0f} | {r['predicted_us']:,.1f} | {r['error_pct']:+.1f}% |"
                  for r in decode_table_rows()]
    from .trainjson import TRAIN, rows as train_rows, train_draw
    if TRAIN.exists():
        d = train_draw()
        lines += ["", "DeepSeek train.json forward chunk (EP64, 4,096 tokens per rank, 20 comm SMs; medians of 4 "
                  "layers; dispatch and combine define the 'profile' release, so they check consistency only; the "
                  f"GEMMs at the clock the training step's own kernels set: {100 * d.hot_us / d.span_us:.0f} % of its "
                  f"span in GEMMs and attention, {100 * d.busy_us / d.span_us:.0f} % busy, {d.demand_w:,.0f} W at "
                  f"boost, throttle {d.throttle:.2f}). " + tag("train-json-gemms") + " Dispatch and combine: "
                  + tag("train-json-comm"), "",
                  "| op | observed us | predicted us | error |", "|---|---:|---:|---:|"]
        lines += [f"| {op} | {o:,.1f} | {p:,.1f} | {100 * (p / o - 1):+.1f}% |" for op, o, p in train_rows()]
    from .deepep import CAP, rows as deepep_rows
    if CAP.exists():
        from .deepep import leave_one_out as deepep_loo
        lines += ["", "DeepEP intranode kernels, 4 x H100 EP4 (traces/observed/deepep-h100x4; last-arriving rank; "
                  "the h100 `intranode` backend is fitted on the kernels alone). " + tag("deepep-h100x4"), "",
                  "| case | op | observed us | predicted us | error |", "|---|---|---:|---:|---:|"]
        lines += [f"| {ph} | {op} | {o:,.1f} | {p:,.1f} | {e:+.1f}% |" for ph, op, o, p, e in deepep_rows()]
        lines += ["", "Leave-one-out of that fit (latency and bandwidth fitted on one phase, the other predicted):", "",
                  "| fitted on | predicts | op | observed us | predicted us | error |", "|---|---|---|---:|---:|---:|"]
        lines += [f"| {a} | {b} | {op} | {o:,.1f} | {p:,.1f} | {e:+.1f}% |" for a, b, op, o, p, e in deepep_loo()]
        from .insitu import leave_one_out as insitu_loo, train_rows as insitu_train
        lines += ["", "In-situ slowdown (hardware.toml [hopper.in_situ], `python -m bench.insitu`), leave-one-out "
                  "between its two ops, and out of sample on train.json's forward kernels (H800, EP64 internode; "
                  "the first release x (1 + slowdown x share beside compute)):", "",
                  "| fitted on | predicts | slowdown | observed us | predicted us | error |",
                  "|---|---|---:|---:|---:|---:|"]
        lines += [f"| {r['fitted_on']} | {r['predicts']} | {r['slowdown']:.3f} | {r['observed_us']:,.1f} | "
                  f"{r['predicted_us']:,.1f} | {100 * (r['predicted_us'] / r['observed_us'] - 1):+.1f}% |"
                  for r in insitu_loo()]
        if TRAIN.exists():
            lines += [f"| hopper.in_situ | train.json {r['op']} | {load_hardware('h100').in_situ.slowdown:.3f} | "
                      f"{r['observed_us']:,.1f} | {r['predicted_us']:,.1f} | "
                      f"{100 * (r['predicted_us'] / r['observed_us'] - 1):+.1f}% |" for r in insitu_train()]
    lines += ["", "Ascend 910C FusedDispatch / FusedCombine, 128 tokens per rank (the published points are the "
              "`paper` release's data, so this checks the interpolation and the payload scaling, not a prediction). "
              + tag("ascend-fused"),
              "", "| op | EP | published us | predicted us | error |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['op']} | {r['ep']} | {r['published_us']:,.0f} | {r['predicted_us']:,.1f} | {r['error_pct']:+.1f}% |"
              for r in ascend_fused_rows()]
    from .ascend import render as ascend_tables
    if (REFERENCE / "seed003_decode_breakdown_us.csv").exists():
        lines += ["", ascend_tables(), "", "Ascend labels: the slides' breakdown " + tag("ascend-slides")
                  + " The paper's rows: " + tag("ascend-paper")]
    lines += ["", "Two-batch overlap, throughput with over without, at the same tokens per GPU unless the row says "
              "(the LMSYS blog's TBO ablation; one stack and one DeepEP release on both sides: the overlapped side "
              "alone pays the in-situ slowdown). " + tag("tbo-ablation"), "",
              "| setting | published | predicted | error | step ms with / without |",
              "|---|---:|---:|---:|---:|"]
    tbo = tbo_ablation_rows()
    for t in tbo:
        lo, hi = t["published"]
        pub = f"x{lo:.3f}" if lo == hi else f"x{lo:.2f}-{hi:.2f}"
        lines.append(f"| {t['label']} | {pub} | x{t['predicted']:.3f} | {t['error_pct']:+.1f}% | "
                     f"{t['on_ms']:,.1f} / {t['off_ms']:,.1f} |")
    lines += ["", *_tbo_miss_notes(tbo)]
    lines += ["", "Single H100 layer capture (traces/observed/h100, 4 MoE layers, copies standing in for the network), "
              "median |error| per stage. " + tag("h100-capture"), "", "| stage | n | median abs error |", "|---|---:|---:|"]
    lines += [f"| {r['stage']} | {r['n']} | {r['median_abs_error_pct']:.1f}% |" for r in h100_capture_rows()]
    from .validate_deploy import render as deploy_tables
    lines += ["", deploy_tables()]
    return "\n".join(lines)


def write_readme(text: str, path: Path = README) -> None:
    body = path.read_text()
    if BEGIN not in body or END not in body:
        raise SystemExit(f"{path}: no validation section markers ({BEGIN} ... {END})")
    head, rest = body.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = render()
    print(text)
    if "--readme" in argv:
        write_readme(text)
        print(f"\nwrote the generated section of {README.relative_to(ROOT)}")
        from . import facts
        facts.write()
        print("wrote the figures README.md and docs/ quote in their prose (bench/facts.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
