"""Capture real single-GPU traces of an MoE forward written the way Hugging Face transformers writes
its eager MoE blocks (Qwen2-MoE-style: a loop over experts, each finding its tokens with torch.where,
which waits for the GPU, plus a gated shared expert), with no annotation of replay's own. A corpus
for issue 27 (structure, expert compute and idle causes on a trace nobody here annotated), captured
before replay was run on it.

    python3 bench/capture/capture_hf_moe.py --out OUT_DIR

Writes OUT_DIR/hf-moe-<variant>.json.gz and OUT_DIR/hf-moe-capture.json (the truth: steps, layers per
step, micro-batches, the host syncs per layer, the device). Variants:
  module   with_stack=True: the Python tracer's nn.Module ranges (Qwen2MoeDecoderLayer_<i>, ...)
  plain    no ranges at all: torch.profiler steps (ProfilerStep#) only"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, schedule

H, HEADS, T, LAYERS, EXPERTS, TOPK, FF, SHARED_FF, STEPS = 2048, 16, 2048, 4, 16, 4, 1408, 5632, 2


class Qwen2MoeAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(H, 3 * H, bias=True)
        self.o_proj = nn.Linear(H, H, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).view(1, T, 3, HEADS, H // HEADS).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(a.transpose(1, 2).reshape(T, H))


class Qwen2MoeMLP(nn.Module):
    def __init__(self, ff: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(H, ff, bias=False)
        self.up_proj = nn.Linear(H, ff, bias=False)
        self.down_proj = nn.Linear(ff, H, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Qwen2MoeSparseMoeBlock(nn.Module):
    """Top-k routing; each expert finds its tokens with torch.where (a device-to-host sync per expert)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Linear(H, EXPERTS, bias=False)
        self.experts = nn.ModuleList(Qwen2MoeMLP(FF) for _ in range(EXPERTS))
        self.shared_expert = Qwen2MoeMLP(SHARED_FF)
        self.shared_expert_gate = nn.Linear(H, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.gate(x).float(), dim=-1)
        weights, chosen = torch.topk(weights, TOPK, dim=-1)
        weights = (weights / weights.sum(-1, keepdim=True)).to(x.dtype)
        out = torch.zeros_like(x)
        mask = F.one_hot(chosen, EXPERTS).permute(2, 1, 0)
        for e, expert in enumerate(self.experts):
            slot, rows = torch.where(mask[e])
            y = expert(x[rows]) * weights[rows, slot, None]
            out.index_add_(0, rows, y)
        return out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)


class Qwen2MoeDecoderLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.input_layernorm, self.post_attention_layernorm = nn.RMSNorm(H), nn.RMSNorm(H)
        self.self_attn = Qwen2MoeAttention()
        self.mlp = Qwen2MoeSparseMoeBlock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen2MoeModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Qwen2MoeDecoderLayer() for _ in range(LAYERS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def out_dir(doc: str | None) -> Path:
    """--out (default $OUT): made if missing; the seed set, as every capture of this model sets it."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "capture-out"))
    out = Path(ap.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    return out


def main() -> None:
    out = out_dir(__doc__)
    model = Qwen2MoeModel().cuda().to(torch.bfloat16).eval()
    x = torch.randn(T, H, device="cuda", dtype=torch.bfloat16)
    runs = {}
    with torch.no_grad():
        for _ in range(3):
            model(x)                                        # warm-up: cuBLAS handles, SDPA kernels chosen
        torch.cuda.synchronize()
        for variant in ("module", "plain"):
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=variant == "module",
                         schedule=schedule(wait=0, warmup=1, active=STEPS, repeat=1)) as prof:
                for _ in range(STEPS + 1):
                    model(x)
                    torch.cuda.synchronize()
                    prof.step()
            raw = out / f"hf-moe-{variant}.json"
            prof.export_chrome_trace(str(raw))
            with open(raw, "rb") as f, gzip.open(str(raw) + ".gz", "wb", compresslevel=9) as g:
                shutil.copyfileobj(f, g)
            raw.unlink()
            runs[variant] = {"steps": STEPS, "layers_per_step": LAYERS, "microbatches": 1,
                             "host_syncs_per_layer": EXPERTS, "ranges": "nn.Module (with_stack)" if variant == "module"
                             else "none (ProfilerStep only)"}
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(0),
           "shape": {"hidden": H, "heads": HEADS, "tokens": T, "layers": LAYERS, "experts": EXPERTS, "top_k": TOPK,
                     "ffn": FF, "shared_ffn": SHARED_FF, "dtype": "bf16"}}
    (out / "hf-moe-capture.json").write_text(json.dumps({"env": env, "runs": runs}, indent=1))
    print("wrote", sorted(p.name for p in out.iterdir()))


if __name__ == "__main__":
    main()
