"""`make validate`: the default preset's predictions beside published throughputs, with no constant
tuned to them. Two predictions per row: `estimate` (ideal overlap, a sum per layer) and `trace`
(the scheduled timeline of all 61 layers, two micro-batches, one rank).

Assumptions the sources do not state are named in the row (e.g. SGLang's decode batch)."""
from __future__ import annotations

import sys

from tracegen.catalog import load_hardware, load_model
from tracegen.estimate import estimate
from tracegen.pipeline import TraceOptions, schedule
from tracegen.plan import Plan
from tracegen.preset import load_preset

DEFAULT = load_preset("default")
MODEL = load_model("deepseek-v3")

ROWS = [
    # label, hardware, plan, published tokens/s per GPU, unit note
    ("DeepSeek profile, prefill EP32, 4K prompts, 16K tokens/GPU (InferSim-derived actual)", "h800",
     Plan(phase="prefill", batch=4, seq_len=4096, tp=1, dp=32, comm="normal"), 7839.0),
    ("DeepSeek profile, decode EP128, batch 128/GPU, 4K context (InferSim-derived actual)", "h800",
     Plan(phase="decode", batch=128, seq_len=4096, tp=1, dp=128, comm="ibgda"), 2324.0),
    ("SGLang 96xH100 DeepSeek-R1 prefill: 4 nodes EP32, 2000-token inputs, 16K tokens/GPU (assumed)", "h100",
     Plan(phase="prefill", batch=16384 / 2000, seq_len=2000, tp=1, dp=32, comm="normal"), 52300.0 / 8),
    ("SGLang 96xH100 DeepSeek-R1 decode: 9 nodes EP72, 2000+100 context, batch 256/GPU (assumed)", "h100",
     Plan(phase="decode", batch=256, seq_len=2050, tp=1, dp=72, redundant_experts=32, comm="ibgda",
          decode_len=100), 22300.0 / 8),
]


def main() -> int:
    print(f"{'configuration':<100}{'published':>11}{'estimate':>10}{'gap':>8}{'trace':>10}{'gap':>8}")
    for label, hw_name, plan, published in ROWS:
        hw = load_hardware(hw_name)
        est = estimate(MODEL, hw, plan, DEFAULT).tokens_per_s_per_gpu_overlap
        sched = schedule(MODEL, hw, plan, DEFAULT, TraceOptions(tbo="proper"))
        per_gpu = plan.dp * plan.tokens_per_group() / plan.num_gpus if plan.phase == "prefill" else plan.batch
        traced = per_gpu / (sched.span_us * 1e-6)
        print(f"{label:<100}{published:>11,.0f}{est:>10,.0f}{100 * (est / published - 1):>7.0f}%"
              f"{traced:>10,.0f}{100 * (traced / published - 1):>7.0f}%")
    print("\ntokens/s per GPU (SGLang's per-node figures / 8). The trace column is one forward step's "
          "GPU timeline: no sampling, scheduling or CPU overhead between steps.")
    from .deepep import CAP, table
    if CAP.exists():
        print()
        print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
