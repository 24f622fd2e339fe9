"""Routed-expert compute (the ranks table's moe_compute_us) on one GPU, where no all-to-all marks a layer
as MoE: a layer whose MLP stage runs the router's top-k is one (replay/data/stages.toml [moe]); a dense
MLP is not. Prompted by the training capture (traces/observed/hf-moe-train), whose Hugging Face-style
expert loop gave 0 expert compute."""
from __future__ import annotations

import json

import pytest

from replay.analyze import analyze
from replay.stagerules import load_stage_rules

TOPK = "void at::native::sbtopk::gatherTopK<float, unsigned int, 2, false>(at::cuda::detail::TensorInfo<float const>)"
GEMM = "nvjet_sm90_tst_128x88_64x7_1x2_h_bz_TNT"
GROUPED = "void cutlass::device_kernel<cutlass::gemm::kernel::GemmUniversal<GroupedProblemShape>>"


def _trace(mlps: list[list[str]]) -> dict:
    """One GPU, a layer per entry: ATTN (one GEMM), then MLP running these kernels, 100 us each, each
    launched inside its stage's range `L<layer>:<STAGE>(0)`."""
    ev, t, corr = [], 0.0, 0
    for layer, mlp in enumerate(mlps):
        for stage, kernels in (("ATTN", [GEMM]), ("MLP", mlp)):
            ev.append({"ph": "X", "cat": "user_annotation", "name": f"L{layer}:{stage}(0)", "pid": 1, "tid": 1,
                       "ts": t, "dur": 10.0 * len(kernels) + 1})
            for k in kernels:
                corr += 1
                ev.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 1,
                           "ts": t + 0.5, "dur": 5.0, "args": {"correlation": corr}})
                ev.append({"ph": "X", "cat": "kernel", "name": k, "pid": 0, "tid": 7, "ts": 1000.0 + corr * 100,
                           "dur": 100.0, "args": {"correlation": corr, "stream": 7}})
                t += 10.0
            t += 1.0
    return {"traceEvents": ev}


def _moe_us(tmp_path, mlps) -> float:
    path = tmp_path / "t.json"
    path.write_text(json.dumps(_trace(mlps)))
    a = analyze(path, use_cache=False, progress=False)
    assert sorted(a.layers["layer"]) == list(range(len(mlps))), a.structure
    return a.ranks[0]["moe_compute_us"]


def test_a_router_makes_an_mlp_expert_compute_and_a_dense_mlp_does_not(tmp_path):
    # layer 0 routes (top-k, then its experts as dense GEMMs); layer 1 is a dense MLP
    assert _moe_us(tmp_path, [[TOPK, GEMM, GEMM], [GEMM, GEMM]]) == pytest.approx(300.0)
    assert _moe_us(tmp_path, [[GEMM, GEMM], [GEMM, GEMM]]) == 0.0


def test_grouped_gemms_stay_the_expert_compute_where_a_layer_has_them(tmp_path):
    # a routed layer with a grouped GEMM: the grouped GEMM alone, as before the router rule
    assert _moe_us(tmp_path, [[TOPK, GROUPED, GEMM]]) == pytest.approx(100.0)


def test_the_router_pattern_is_data():
    rx = load_stage_rules().router
    assert rx is not None and rx.search(TOPK) and rx.search("vllm::moe::topkGatingSoftmax<8, 128>")
    assert rx.search("void sglang::biased_grouped_topk_kernel<float>") and not rx.search(GEMM)
