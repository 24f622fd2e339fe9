"""Every current expert-parallel library's kernels are communication, from their public sources'
kernel names (the source of each is in replay/data/taxonomy.toml): a faithfully named two-layer
trace per family is classified, its all-to-all found, its layers recovered from the dispatch /
combine sequence, and where the host waits after a kernel (DeepEP's normal notify) that wait is a
dispatch wait."""
from __future__ import annotations

import json

import pytest

from replay.analyze import analyze
from replay.taxonomy import load_taxonomy

FAMILIES = {   # family -> (dispatch kernel, combine kernel, notify kernel or None)
    "deepep-v1": ("void deep_ep::intranode::dispatch<8, 768, 8192>(int4*, float*, int*)",
                  "void deep_ep::intranode::combine<__nv_bfloat16, 8, 768, 4096>(__nv_bfloat16*, float*)",
                  "void deep_ep::intranode::notify_dispatch<8>(int const*, int*, int)"),
    "deepep-v1-ll": ("void deep_ep::internode_ll::dispatch<true, false, 7168>(void*, float*, int*)",
                     "void deep_ep::internode_ll::combine<false, 7168, 9>(void*, void*, int*)", None),
    "deepep-v2-legacy": ("void deep_ep::legacy::intranode::dispatch<8, 768, 8192>(int4*, float*, int*)",
                         "void deep_ep::legacy::intranode::combine<__nv_bfloat16, 8, 768, 4096>(__nv_bfloat16*)",
                         "void deep_ep::legacy::intranode::notify_dispatch<8>(int const*, int*, int)"),
    "deepep-v2-elastic": ("void deep_ep::elastic::dispatch_impl<true, 3, true, false, 24, 4, 14>(void*, void*)",
                          "void deep_ep::elastic::combine_impl<true, 24, 8, 7168>(void*, void*)", None),
    "uccl-ep": ("void uccl::internode_ll::dispatch<true, false, 7168>(void*, void*, int*)",
                "void uccl::internode_ll::combine<false, 7168, 9>(void*, void*, int*)", None),
    "uccl-ep-normal": ("void uccl::intranode::dispatch<8, 768, 8192>(int4*, float*, int*)",
                       "void uccl::intranode::combine<__nv_bfloat16, 8, 768, 4096>(__nv_bfloat16*)",
                       "void uccl::intranode::notify_dispatch<8>(int const*, int*, int)"),
    "nccl-ep": ("void nccl_ep::internode_ll::dispatch<true, false, 7168>(void const*, long const*)",
                "void nccl_ep::internode_ll::combine<false, 7168>(void const*, long const*)", None),
    "mooncake-ep": ("void mooncake::dispatch_kernel<true>(void*, float*, int*)",
                    "void mooncake::combine_kernel<false>(void*, int*)", None),
    "ascend-mc2": ("MoeDistributeDispatchV2", "MoeDistributeCombineV2", None),
    "trtllm-mnnvl": ("void tensorrt_llm::kernels::moeA2ADispatchKernel<8>(MoeA2ADispatchParams)",
                     "void tensorrt_llm::kernels::moeA2ACombineKernel<__nv_bfloat16, 8>(MoeA2ACombineParams)", None),
    "pplx": ("void pplx::dispatchKernel<unsigned char, 8>(pplx::DispatchArgs)",
             "void pplx::combineKernel<__nv_bfloat16>(pplx::CombineArgs)", None),
}
GEMM = "nvjet_sm90_tst_256x128_64x4_2x1_v_bz_TNT"
GROUPED = "void deep_gemm::fp8_gemm_kernel<7168, 2048, 128, 128, 128, 256, 8, 1, 1, GemmType::GroupedMasked>()"


def _trace(dispatch: str, combine: str, notify: str | None, layers: int = 2, spin_us: float = 300.0) -> dict:
    """One rank, two micro-batches in the improper order: per layer micro-batch 0's attention GEMM,
    (notify, a host spin on its counts,) the dispatch on a side stream, micro-batch 1's attention
    GEMM (independent work, launched only after the spin), the experts, the combine; every kernel
    launched by a cudaLaunchKernel with its correlation id."""
    ev = []
    clock = {"cpu": 0.0, 7: 0.0, 22: 0.0}
    corr = 0

    def launch(name: str, stream: int, dur: float, after: float = 0.0) -> float:
        nonlocal corr
        corr += 1
        ev.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 1,
                   "ts": clock["cpu"], "dur": 5.0, "args": {"correlation": corr}})
        clock["cpu"] += 6.0
        start = max(clock[stream], clock["cpu"], after)
        ev.append({"ph": "X", "cat": "kernel", "name": name, "pid": 0, "tid": stream, "ts": start,
                   "dur": dur, "args": {"correlation": corr, "stream": stream}})
        clock[stream] = start + dur
        return clock[stream]

    for _ in range(layers):
        a0 = launch(GEMM, 7, 200.0)
        if notify:
            launch(notify, 22, 20.0, a0)
            clock["cpu"] += spin_us                   # the host spins on the received counts (no CUDA call)
        d = launch(dispatch, 22, 150.0, a0)
        launch(GEMM, 7, 200.0)                        # micro-batch 1's attention: independent of the dispatch
        e = launch(GROUPED, 7, 300.0, d)
        launch(combine, 22, 150.0, e)
    return {"traceEvents": ev, "distributedInfo": {"rank": 0, "world_size": 1}}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_is_communication_and_gives_layers(tmp_path, family):
    dispatch, combine, notify = FAMILIES[family]
    tax = load_taxonomy(None)
    for name in filter(None, (dispatch, combine, notify)):
        assert tax.classify_name(name)[0] == "comm", (family, name, tax.classify_name(name))
    assert "dispatch" in tax.classify_name(dispatch)[1] and "combine" in tax.classify_name(combine)[1]
    path = tmp_path / f"{family}.json"
    path.write_text(json.dumps(_trace(dispatch, combine, notify)))
    a = analyze(path, use_cache=False, progress=False)
    assert a.ranks[0]["comm_us"] > 0
    assert not any(s["what"] == "no_communication" for s in a.suspicious)
    assert a.structure == "comm-sequence" and sorted(a.layers["layer"]) == [0, 1], a.structure
    assert a.ranks[0]["moe_compute_us"] > 0                   # the grouped GEMM is routed-expert compute
    if notify:                                                # the spin after notify is a dispatch wait
        assert tax.classify_name(notify)[2] == "dispatch"
        assert a.idle_groups[0]["cpu_blocked_launch"]["dispatch"] + \
            a.idle_groups[0]["cpu_blocked_launch"]["pipeline_fill"] > 0


# kernel names as the engines' sources and public profiles spell them (taxonomy.toml gives the source)
OTHER_NAMES = {
    "void vllm::cross_device_reduce_1stage<__nv_bfloat16, 8>(vllm::RankData*, vllm::RankSignals, vllm::Signal*, "
    "__nv_bfloat16*, int, int)": ("comm", "custom_allreduce"),
    "void sglang::cross_device_reduce_2stage<__half, 8>(sglang::RankData*, sglang::RankSignals, sglang::Signal*, "
    "__half*, int, int)": ("comm", "custom_allreduce"),
    "void flashinfer::trtllm_allreduce_fusion::allreduce_fusion_kernel_oneshot_lamport<(flashinfer::trtllm_"
    "allreduce_fusion::AllReduceFusionPattern)1, __nv_bfloat16, 8, false, false>(flashinfer::trtllm_allreduce_"
    "fusion::AllReduceFusionParams<__nv_bfloat16>)": ("comm", "custom_allreduce"),
    "void marlin_moe_wna16::Marlin<1125899906909960l, 562949953487106l>(int4 const*, int4 const*)":
        ("compute", "grouped_gemm"),
    "void vllm::moe::moe_align_block_size_kernel<int>(int const*, int*, int*, int*, int, int, int, int, "
    "unsigned long, int*)": ("compute", "routing"),
    "void finalizeMoeRoutingKernel<__nv_bfloat16, __nv_bfloat16, false>(__nv_bfloat16 const*)": ("compute", "routing"),
    # decode attention: TensorRT-LLM's XQA, SGLang's Triton kernels (stage 1 grouped, stage 2)
    "kernel_mha": ("compute", "attention"),
    "_fwd_grouped_kernel_stage1": ("compute", "attention"),
    "_fwd_kernel_stage2": ("compute", "attention"),
    # vLLM: weight-only quantised dense GEMM (gptq_marlin), the top-k sum of a MoE block, KV-cache writes
    "void marlin::Marlin<(vllm::ScalarType::Id)5, 256, 1, 8, 8, 4, false, 4, 8, true>(int4 const*, int4 const*, "
    "int4*, int4*, int4 const*, int4 const*, int const*, int const*, int, int, int, int, int, int, bool, int, bool, "
    "bool)": ("compute", "gemm"),
    "void vllm::moe::moe_sum_kernel<c10::BFloat16, 8>(c10::BFloat16*, c10::BFloat16 const*, int)": ("compute", "reduction"),
    "void vllm::reshape_and_cache_flash_kernel<__nv_bfloat16, __nv_bfloat16, (vllm::Fp8KVCacheDataType)0>("
    "__nv_bfloat16 const*, __nv_bfloat16 const*, __nv_bfloat16*, __nv_bfloat16*, long const*, long, long, long, "
    "long, long, int, int, int, float const*, float const*)": ("compute", "elementwise"),
    "void vllm::concat_and_cache_mla_kernel<__nv_bfloat16, unsigned char, (vllm::Fp8KVCacheDataType)1>(__nv_bfloat16 "
    "const*, __nv_bfloat16 const*, unsigned char*, long const*, int, int, int, int, int, int, float const*)":
        ("compute", "elementwise"),
    # ROCm's Tensile GEMM (HTA's MI250 trace) and torch.compile's Triton GEMM template
    "Cijk_Ailk_Bjlk_SB_Bias_AS_SAV_UserArgs_MT64x16x16_MI16x16x1_SN_LDSB0_AFC1_AFEM1_AFEM1_ASEM1_CLR1_CADS0_EPS0_"
    "GRVWA1_GRVWB1_GSUAMB_ISA90a_IU1_K1_LBSPPA0": ("compute", "gemm"),
    "triton_tem_fused_addmm_3": ("compute", "gemm"),
    # PyTorch's eager elementwise kernels (the Qwen3 capture's): 'nocast' is no cast, LoadWithCast converts
    "void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl_nocast<at::native::BinaryFunctor<"
    "c10::BFloat16, c10::BFloat16, c10::BFloat16, at::native::binary_internal::MulFunctor<float> > >(at::"
    "TensorIteratorBase&, at::native::BinaryFunctor<c10::BFloat16, c10::BFloat16, c10::BFloat16, at::native::"
    "binary_internal::MulFunctor<float> > const&)::{lambda(int)#1}>(int, at::native::gpu_kernel_impl_nocast<"
    "at::native::BinaryFunctor<c10::BFloat16, c10::BFloat16, c10::BFloat16, at::native::binary_internal::"
    "MulFunctor<float> > >(at::TensorIteratorBase&, at::native::BinaryFunctor<c10::BFloat16, c10::BFloat16, "
    "c10::BFloat16, at::native::binary_internal::MulFunctor<float> > const&)::{lambda(int)#1})": ("compute", "elementwise"),
    "void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)::"
    "{lambda()#3}::operator()() const::{lambda()#10}::operator()() const::{lambda(c10::BFloat16)#1}, std::array<"
    "char*, 2ul>, 4, TrivialOffsetCalculator<1, unsigned int>, TrivialOffsetCalculator<1, unsigned int>, at::"
    "native::memory::LoadWithCast<1>, at::native::memory::StoreWithCast<1> >(int, at::native::direct_copy_kernel_"
    "cuda(at::TensorIteratorBase&)::{lambda()#3}::operator()() const::{lambda()#10}::operator()() const::{lambda("
    "c10::BFloat16)#1}, std::array<char*, 2ul>, TrivialOffsetCalculator<1, unsigned int>, TrivialOffsetCalculator"
    "<1, unsigned int>, at::native::memory::LoadWithCast<1>, at::native::memory::StoreWithCast<1>)": ("compute", "quant_cast"),
    # norms and routing in namespaces named after attention: FlashInfer's norm.cuh, TensorRT-LLM's / FlashInfer's
    # fused-MoE routing (trtllm_fused_moe_routing_deepseek.cu), SGLang's fused gate (sgl-kernel moe_fused_gate.cu)
    "void flashinfer::norm::FusedAddRMSNormKernel<8u, __nv_bfloat16>(__nv_bfloat16*, __nv_bfloat16*, __nv_bfloat16*, "
    "unsigned int, unsigned int, unsigned int, float, float)": ("compute", "norm"),
    "void flashinfer::norm::RMSNormKernel<8u, __nv_bfloat16>(__nv_bfloat16*, __nv_bfloat16*, __nv_bfloat16*, "
    "unsigned int, unsigned int, unsigned int, float, float)": ("compute", "norm"),
    "void moe::dev::routing::routingDeepSeek::routingMainKernel<moe::dev::routing::routingDeepSeek::KernelParams<"
    "__nv_bfloat16, __nv_bfloat16, 256, true> >(moe::dev::routing::routingDeepSeek::KernelParams<__nv_bfloat16, "
    "__nv_bfloat16, 256, true>)": ("compute", "routing"),
    "void moe_fused_gate_kernel<float, 8, 256, 32, 1, 1, 4>(void*, void*, float*, int*, long, long, long, long, "
    "double)": ("compute", "routing"),
    # Inductor's glue kernels named after the attention / GEMM whose inputs they prepare (the compiled Qwen3
    # capture's): the glue, not the priced op; one with a norm among its ops is that norm
    "triton_poi_fused__scaled_dot_product_cudnn_attention_arange_le_scalar_tensor_view_where_2": ("compute", "elementwise"),
    "triton_poi_fused__grouped_mm__to_copy_index_transpose_1": ("compute", "elementwise"),
    "triton_per_fused__fused_rms_norm__scaled_dot_product_cudnn_attention_add_cat_mul_neg_split_transpose_view_1":
        ("compute", "norm"),
    # CUTLASS 3's grouped GEMM (GroupProblemShape), demangled
    "void cutlass::device_kernel<cutlass::gemm::kernel::GemmUniversal<cutlass::gemm::GroupProblemShape<cute::tuple<"
    "int, int, int> >, cutlass::gemm::collective::CollectiveMma<> > >(cutlass::gemm::kernel::GemmUniversal<>::Params)":
        ("compute", "grouped_gemm"),
}


@pytest.mark.parametrize("name", sorted(OTHER_NAMES))
def test_tensor_parallel_all_reduce_and_moe_kernels_are_classified(name):
    from replay.taxonomy import load_taxonomy
    assert load_taxonomy().classify_name(name)[:2] == OTHER_NAMES[name]


def test_every_compute_class_says_whether_the_cost_model_prices_it():
    """replay compare splits a slower stage between the kernels the cost model prices and those it has no op
    for (a rule's `costed`): a built-in compute class that says neither counts on neither side, so a new one must
    say. Left unmarked on purpose: other_kernel (unrecognised: perhaps a GEMM) and DeepEP's layout kernel (part
    of the dispatch's cost, not a stage's compute)."""
    from replay.taxonomy import load_taxonomy
    tax = load_taxonomy()
    compute = {sub for klass, sub, _, _ in tax.rules if klass == "compute"}
    marked = tax.costed_subclasses(True) | tax.costed_subclasses(False)
    assert compute - marked == {"other_kernel", "deepep_layout"}, compute - marked
    assert {"gemm", "grouped_gemm", "attention"} <= tax.costed_subclasses(True)
