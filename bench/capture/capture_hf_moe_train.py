"""Capture real single-GPU traces of an MoE *training* step (forward, backward, AdamW) of the Hugging
Face-style eager model of capture_hf_moe.py (Qwen2-MoE-style: a loop over experts, each finding its
tokens with torch.where, a gated shared expert), with 8 experts. A corpus for issue 27 on a kind of
trace users bring that the inference corpus lacks: the backward runs on autograd's own CPU thread with
no nn.Module ranges, and the optimizer's foreach kernels follow it. Captured before replay ran on it;
what replay must recover is pinned in tests/test_train_capture.py and the capture record's README.

    python3 bench/capture/capture_hf_moe_train.py --out OUT_DIR

Writes OUT_DIR/hf-moe-train-<variant>.json.gz and OUT_DIR/hf-moe-train-capture.json (the truth: steps,
forward layers per step, backward layers per step, host syncs per forward layer, the device). Variants:
  module   with_stack=True: nn.Module ranges on the forward (Qwen2MoeDecoderLayer_<i>, ...)
  memory   as module, with record_shapes=True and profile_memory=True (the options many users turn on:
           [memory] instant events and input shapes in every op's args)
  plain    no ranges at all: torch.profiler steps (ProfilerStep#) only"""
from __future__ import annotations

import json

import torch
from torch.profiler import ProfilerActivity, profile, schedule

import capture_hf_moe as hf
from capture_hf_decode import save      # the trace written gzipped (level 9), the raw JSON removed

EXPERTS, STEPS = 8, 2
hf.EXPERTS = EXPERTS          # the block reads the module's constant when built and in its forward


def main() -> None:
    out = hf.out_dir(__doc__)
    model = hf.Qwen2MoeModel().cuda().to(torch.bfloat16).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    x = torch.randn(hf.T, hf.H, device="cuda", dtype=torch.bfloat16)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model(x).float().pow(2).mean().backward()
        opt.step()
        torch.cuda.synchronize()

    for _ in range(3):
        step()                                              # warm-up: cuBLAS handles, optimizer state
    runs = {}
    for variant in ("module", "memory", "plain"):
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=variant != "plain",
                     record_shapes=variant == "memory", profile_memory=variant == "memory",
                     schedule=schedule(wait=0, warmup=1, active=STEPS, repeat=1)) as prof:
            for _ in range(STEPS + 1):
                step()
                prof.step()
        save(prof, out, f"hf-moe-train-{variant}")
        runs[variant] = {"steps": STEPS, "forward_layers_per_step": hf.LAYERS, "backward_layers_per_step": hf.LAYERS,
                         "microbatches": 1, "host_syncs_per_forward_layer": EXPERTS, "optimizer": "AdamW (foreach)",
                         "ranges": {"module": "nn.Module (with_stack), forward only",
                                    "memory": "nn.Module (with_stack), forward only; record_shapes, profile_memory",
                                    "plain": "none (ProfilerStep only)"}[variant]}
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(0),
           "shape": {"hidden": hf.H, "heads": hf.HEADS, "tokens": hf.T, "layers": hf.LAYERS, "experts": EXPERTS,
                     "top_k": hf.TOPK, "ffn": hf.FF, "shared_ffn": hf.SHARED_FF, "dtype": "bf16"}}
    (out / "hf-moe-train-capture.json").write_text(json.dumps({"env": env, "runs": runs}, indent=1))
    print("wrote", sorted((p.name, p.stat().st_size) for p in out.iterdir()))


if __name__ == "__main__":
    main()
