"""Time of one op on one GPU: the op's FLOPs and bytes (ops.py) against the hardware's rates,
under a preset's conventions. Every duration the project predicts comes from `op_time`."""
from __future__ import annotations

from dataclasses import dataclass, field

from .catalog import Hardware, Release
from .ops import Work
from .plan import Plan
from .preset import Preset, local_experts

_MB = 1e6                  # bytes per MB: bytes / MB / (GB/s) = ms
_SEED_NET_MB = 2 ** 20     # the seed divides bytes by 2^20 and reads MB / (GB/s) as ms
_SEED_MEM_MB = 2 ** 30 / 1e3   # ... and KV bytes by 2^30 / 1000 for its HBM term


@dataclass(frozen=True)
class Timed:
    """One op with its time (ms) and the cost terms that produced it."""
    work: Work
    ms: float
    terms: dict[str, float] = field(default_factory=dict)   # term name -> ms

    @property
    def us(self) -> float:
        return self.ms * 1e3


def comm_sms(plan: Plan, hw: Hardware, preset: Preset) -> int:
    """SMs the plan's all-to-all holds while in flight."""
    if plan.comm_sms is not None:
        return plan.comm_sms
    if plan.phase == "decode" and preset.decode_comm_sms >= 0:
        return preset.decode_comm_sms
    return hw.backend(plan.comm).sms


def sm_fraction(plan: Plan, hw: Hardware, preset: Preset, overlapped: bool) -> float:
    """Share of SMs compute runs on: all of them unless communication holds some. Where the
    all-to-all runs on vector cores of its own (Ascend AIV), the GEMM and attention cores stay whole
    (the schedule slows the stages' vector work instead: `vector_rate`)."""
    if hw.vector_cores:
        return 1.0
    if preset.comm_sms_in_compute == "always" or overlapped:
        return (hw.sm_count - comm_sms(plan, hw, preset)) / hw.sm_count
    return 1.0


def vector_rate(hw: Hardware, work_us: float, vector_us: float, held: int) -> float:
    """Progress rate of a compute stage while communication holds `held` cores: on SIMT GPUs the
    stage runs on the SMs left; with separate vector cores only its vector part (elementwise
    kernels: norms, activations, quantisation) slows, to the vector cores left."""
    if not held:
        return 1.0
    if not hw.vector_cores:
        return (hw.sm_count - held) / hw.sm_count
    f = vector_us / work_us if work_us > 0 else 0.0
    left = max(hw.vector_cores - held, 1e-9) / hw.vector_cores
    return 1.0 / ((1.0 - f) + f / left)


def compute_rate(hw: Hardware, preset: Preset, rate: str, kind: str, m: float, n: float = 0.0,
                 k: float = 0.0) -> float:
    """Achieved TFLOPS for `rate` ("bf16", or an 8-bit format: "fp8"/"int8") FLOPs of op `kind` on an
    M x N x K product, all SMs, at the clock the step's power draw leaves (power.py)."""
    peak = hw.bf16_tflops if rate == "bf16" else hw.q8_tflops
    eff = preset.flat_discount if preset.flat_discount is not None else hw.eff(kind, m, n, k)
    return peak * preset.usable_peak * eff / hw.clock_slowdown(kind)


def hbm_rate(hw: Hardware, preset: Preset, kind: str = "") -> float:
    """Achieved HBM GB/s of an op kind: its own streaming efficiency where its curve has one."""
    if preset.flat_discount is not None:
        return hw.hbm_gbps * preset.flat_discount
    own = hw.curve(kind).hbm if hw.has_curve(kind) else 0.0
    return hw.hbm_gbps * (own or hw.eff("hbm"))


def link_rate(hw: Hardware, preset: Preset, link: str, backend_eff: float | None = None) -> float:
    """Achieved GB/s on a link; the backend's own efficiency applies to the link it drives."""
    if preset.flat_discount is not None:
        eff = preset.flat_discount
    elif backend_eff is not None:
        eff = backend_eff
    else:
        eff = hw.eff(link)
    return link_gbps(hw, link) * eff


def roofline(compute: float, memory: float, floor: float, blend: float = 0.0) -> float:
    """An op's time from its terms: the larger of compute and memory (`blend` 0) or their p-norm
    (`blend` = p: EffCurve says why), never under the kernel floor."""
    both = (compute ** blend + memory ** blend) ** (1.0 / blend) if blend else max(compute, memory)
    return max(both, floor)


def op_time(w: Work, plan: Plan, hw: Hardware, preset: Preset, overlapped: bool = False) -> Timed:
    """Milliseconds for one op; `overlapped` means communication holds its SMs meanwhile."""
    if w.is_comm:
        return _comm_time(w, plan, hw, preset)
    share = sm_fraction(plan, hw, preset, overlapped)
    terms: dict[str, float] = {}
    if w.flops:
        factor = share * (preset.decode_expert_factor
                          if plan.phase == "decode" and (w.name == "shared_expert" or w.name.startswith("routed_")) else 1.0)
        if w.gemms and preset.flat_discount is None:      # each product at its own shape's efficiency
            terms["compute_ms"] = sum(2 * m * n * k * c / 1e9 / (compute_rate(hw, preset, w.rate, w.kind, m, n, k)
                                                                 * factor) for m, n, k, c in w.gemms if c and m)
        else:
            terms["compute_ms"] = w.flops / 1e9 / (compute_rate(hw, preset, w.rate, w.kind, w.m) * factor)
    if preset.memory_time == "roofline":
        if w.hbm_bytes:
            terms["memory_ms"] = w.hbm_bytes / _MB / hbm_rate(hw, preset, w.kind)
        floor = hw.curve(w.kind).floor_us if hw.has_curve(w.kind) else 0.0
        if floor:
            terms["floor_ms"] = floor * w.kernels / 1e3
        blend = hw.curve(w.kind).blend if hw.has_curve(w.kind) else 0.0
        ms = roofline(terms.get("compute_ms", 0.0), terms.get("memory_ms", 0.0), terms.get("floor_ms", 0.0), blend)
    else:   # the seed: only the KV-cache load, added on top of the compute
        if w.kv_bytes:
            terms["kv_load_ms"] = w.kv_bytes / _SEED_MEM_MB / hbm_rate(hw, preset)
        ms = sum(terms.values())
    return Timed(w, ms, terms)


def _comm_time(w: Work, plan: Plan, hw: Hardware, preset: Preset) -> Timed:
    mb = _SEED_NET_MB if preset.binary_megabytes else _MB
    terms: dict[str, float] = {}
    if w.kind == "allreduce":
        terms["scaleup_ms"] = w.scaleup_bytes / mb / link_rate(hw, preset, "scaleup")
        return Timed(w, terms["scaleup_ms"], terms)
    if w.kind == "a2a" and local_experts(plan, preset):
        return Timed(w, 0.0, {"local_ms": 0.0})
    backend = hw.backend(plan.comm)
    release = backend.pick(plan.comm_release) if preset.comm_figures == "published" else None
    lat_ms = backend.latency_us / 1e3 if preset.comm_latency else 0.0
    if release is not None and release.unit == "us":
        # low-latency kernels: the release's published time for its benchmark's payload, the part
        # beyond the fixed latency scaled by this op's payload
        # (and by the link: the release was measured on `link_gbps`)
        link = "scaleup" if backend.link == "scaleup" else "scaleout"
        terms[f"{link}_ms"] = (max(0.0, release.at(w.name, plan.ep_size) / 1e3 - lat_ms)
                               * published_ratio(w, plan, release) * release.link_gbps / link_gbps(hw, backend.link))
    else:
        for kind, size in (("scaleout", w.scaleout_bytes), ("scaleup", w.scaleup_bytes)):
            # the single-GPU copy stand-in sends what would cross RDMA over the host link instead
            link = "pcie" if kind == "scaleout" and backend.link == "pcie" else kind
            if not size:
                continue
            if release is not None and kind == "scaleout" and backend.node_dedup:
                terms["scaleout_ms"] = size * counted_share(plan, hw) / mb / published_gbps(w, plan, hw, release)
                continue
            eff = backend.bw_eff if backend.link == link else None
            terms[f"{link}_ms"] = size / mb / link_rate(hw, preset, link, eff)
    ms = max(terms.values(), default=0.0)
    if preset.comm_latency:
        terms["latency_ms"] = lat_ms
        if backend.per_message_us:
            peers = max(1, plan.ep_size - 1)
            terms["proxy_ms"] = backend.per_message_us * peers / 1e3
        ms += terms["latency_ms"] + terms.get("proxy_ms", 0.0)
    return Timed(w, ms, terms)


def counted_share(plan: Plan, hw: Hardware) -> float:
    """Bytes DeepEP's normal kernels push through their RDMA stage per byte that leaves the node:
    the local node's share passes through the same pipeline, and the published bandwidths count it
    (tests/legacy/test_internode.py: distinct destination nodes per token, the local one included)."""
    nodes = max(2, -(-plan.ep_size // hw.scaleup_domain))
    return nodes / (nodes - 1)


def link_gbps(hw: Hardware, link: str) -> float:
    """The raw bandwidth of the link a backend drives."""
    return {"scaleout": hw.scaleout_gbps, "scaleup": hw.scaleup_gbps, "pcie": hw.pcie_gbps}[link]


def published_gbps(w: Work, plan: Plan, hw: Hardware, release: Release) -> float:
    """A release's published bandwidth for this op at the plan's EP, scaled to this hardware's NIC."""
    return release.at(w.name, plan.ep_size) * link_gbps(hw, "scaleout") / release.link_gbps


# the payload of the low-latency benchmark DeepEP publishes: DeepSeek-V3's hidden size, top-8,
# FP8 dispatch (one FP32 scale per 128 channels), BF16 combine
_LL_BENCH = {"hidden": 7168, "topk": 8, "dispatch": 1 + 4 / 128, "combine": 2.0}


def published_ratio(w: Work, plan: Plan, release: Release) -> float:
    """This op's payload over the benchmark's (both as copies leaving the rank)."""
    ep = plan.ep_size
    bench = release.ref_tokens * _LL_BENCH["topk"] * _LL_BENCH["hidden"] * _LL_BENCH[w.name] * (ep - 1) / ep
    return (w.scaleout_bytes + w.scaleup_bytes) / bench if bench else 1.0
