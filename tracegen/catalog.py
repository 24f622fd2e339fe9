"""Hardware and model catalogs: TOML (or JSON) data files, validated into frozen dataclasses.

Every entry is a table keyed by its canonical name. `base = "other"` inherits the other entry's
fields (used for abstract families such as `hopper`, marked `abstract = true`). Names resolve
case-insensitively, ignoring spaces, dashes, underscores and dots, through `aliases`.
"""
from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from .base.errors import UserError
from .base.units import parse_quantity

DATA = resources.files("tracegen") / "data"


# ----------------------------------------------------------------------------- hardware
@dataclass(frozen=True)
class EffCurve:
    """Fraction of peak one op kind reaches on a GEMM of M rows, N columns and depth K:
    `max * g(M) * f(N, n_half) * f(K, k_half)`, where f(x, h) = x / (x + h) and
    g(M) = M^p / (M^p + m_half^p) with p = m_pow (a half of 0 drops that factor);
    `floor_us` is the shortest time one kernel of this kind takes, however little it does; `hbm`,
    the fraction of HBM bandwidth its memory traffic reaches (0: the hardware's `hbm` efficiency) -
    a small-M GEMM streams its weights well below a copy's rate. `blend`: how the compute and
    memory times combine - 0, the larger of the two (a hard roofline); p > 0, their p-norm
    (c^p + m^p)^(1/p): near the knee a kernel pays part of both, as a masked grouped GEMM does
    when computing and streaming its experts' weights take similar time."""
    max: float
    m_half: float = 0.0
    floor_us: float = 0.0
    n_half: float = 0.0
    k_half: float = 0.0
    m_pow: float = 1.0
    hbm: float = 0.0
    blend: float = 0.0

    def at(self, m: float, n: float = 0.0, k: float = 0.0) -> float:
        e = self.max
        if self.m_half > 0 and m > 0:
            e *= 1.0 / (1.0 + (self.m_half / m) ** self.m_pow)
        for x, h in ((n, self.n_half), (k, self.k_half)):
            if h > 0 and x > 0:
                e *= x / (x + h)
        return e


@dataclass(frozen=True)
class CommBackend:
    """How one all-to-all implementation behaves on this hardware (see DESIGN.md section 1)."""
    name: str
    link: str               # "scaleout" (RDMA), "scaleup" (NVLink / unified bus) or "pcie"
    sms: int                # SMs held while a transfer is in flight (0: GPU-initiated, frees SMs)
    bw_eff: float           # achieved fraction of the link bandwidth
    latency_us: float       # fixed cost per dispatch or combine kernel
    cpu_block_us: float     # CPU blocked waiting for received counts (normal dispatch), 0 if none
    per_message_us: float   # CPU proxy posting cost per destination peer (non-IBGDA), 0 if none
    fused: bool             # gating+quantisation fused into dispatch (Ascend)
    source: str
    node_dedup: bool = False    # one copy per destination node, forwarded inside it (normal kernels)
    rank_dedup: bool = False    # one copy per destination rank, all inside one scale-up domain (intranode)
    expert_layout: str = "contiguous"   # what the dispatch hands the experts: contiguous rows or masked per expert
    releases: dict[str, "Release"] = field(default_factory=dict)   # published figures per library release
    release: str = ""           # the release used when the plan names none

    def pick(self, name: str = "") -> "Release | None":
        """The named release's published figures (the backend's default when `name` is empty)."""
        if not self.releases:
            return None
        key = name or self.release
        if key not in self.releases:
            raise UserError(f"{self.name}: no release {key!r} (known: {', '.join(sorted(self.releases))})")
        return self.releases[key]


@dataclass(frozen=True)
class Release:
    """One library release's published all-to-all figures, by EP size, as its authors measured them:
    `GB/s` (normal kernels: bytes as the library counts them / kernel time) or `us` (low-latency
    kernels: time for `ref_tokens` tokens of the model the library benchmarks)."""
    name: str
    unit: str                       # "GB/s" or "us"
    dispatch: dict[int, float]
    combine: dict[int, float]
    link_gbps: float                # the link the figures were measured on (scales them to another NIC)
    source: str
    ref_tokens: float = 0.0         # "us": tokens per rank in the benchmark
    sms: int | None = None          # SMs the benchmark gave the kernels (None: the backend's)
    in_situ: bool = False           # measured beside compute already: the scheduler does not slow it again

    def held(self, ep: int) -> list[str]:
        """'op at EP n' for each op whose published EP sizes do not reach `ep` (at() holds the
        nearest published figure there)."""
        out = []
        for op, pts in (("dispatch", self.dispatch), ("combine", self.combine)):
            xs = sorted(pts)
            if not xs[0] <= ep <= xs[-1]:
                out.append(f"{op} at EP{xs[0] if ep < xs[0] else xs[-1]}")
        return out

    def at(self, op: str, ep: int) -> float:
        """The published figure for `op` at EP `ep`: interpolated in log2(EP) between the published
        sizes, the nearest one outside them."""
        pts = self.dispatch if op == "dispatch" else self.combine
        xs = sorted(pts)
        if ep <= xs[0]:
            return pts[xs[0]]
        if ep >= xs[-1]:
            return pts[xs[-1]]
        hi = next(x for x in xs if x >= ep)
        lo = max(x for x in xs if x <= ep)
        if hi == lo:
            return pts[lo]
        f = (math.log2(ep) - math.log2(lo)) / (math.log2(hi) - math.log2(lo))
        return pts[lo] + f * (pts[hi] - pts[lo])


CURVE_FALLBACK = {"grouped_gemm_masked": "grouped_gemm", "attention_decode_gqa": "attention_decode"}


@dataclass(frozen=True)
class Power:
    """The board's power limit and what the work draws at the boost clock (tracegen/power.py uses it):
    compute-bound kernels draw `compute_w`, memory-bound ones `memory_w`, an idle (waiting) GPU
    `idle_w`. Where a step's mean draw would exceed `limit_w` the card lowers its SM clock, and each
    compute-bound kind's time grows towards its `slowdown` (measured back to back at the limit),
    reached in full once the excess is `saturate` of the most it can be."""
    limit_w: float
    compute_w: float
    memory_w: float
    idle_w: float
    saturate: float
    slowdown: dict[str, float]
    source: str


@dataclass(frozen=True)
class InSitu:
    """Communication kernels that hold SMs run slower while compute kernels run beside them (they
    share HBM, L2 and issue slots): time x (1 + slowdown x the share of it spent beside compute).
    Measured, not a release: bench/insitu.py."""
    slowdown: float
    source: str


@dataclass(frozen=True)
class Hardware:
    key: str
    name: str
    sm_count: int
    q8_tflops: float        # dense 8-bit peak: FP8 TFLOPS, or INT8 TOPS where the chip has no FP8
    bf16_tflops: float      # dense peak
    hbm_gb: float
    hbm_gbps: float
    scaleup_gbps: float     # per accelerator, one direction
    scaleup_domain: int     # accelerators in one scale-up (NVLink / UB) domain
    scaleout_gbps: float    # per accelerator RDMA bandwidth, one direction
    pcie_gbps: float        # host link, one direction (used when copies stand in for the network)
    gpus_per_node: int
    cpu_launch_us: float    # CPU time to launch one kernel
    efficiency: dict[str, EffCurve]
    comm: dict[str, CommBackend]
    source: str
    aliases: tuple[str, ...] = ()
    q8_format: str = "fp8"      # the chip's 8-bit GEMM format: "fp8" or "int8" (Ascend 910C has no FP8)
    vector_cores: int = 0       # separate vector cores (Ascend AIV) the all-to-all kernels run on; 0: the
                                # SMs do both (NVIDIA), and a backend's `sms` are taken from compute
    dies_per_package: int = 1   # ranks per package: the figures above are per rank (one die); a
                                # source's "per NPU" / "per chip" may mean the package
    power: Power | None = None  # the power limit's model (None: the clock never drops)
    throttle: float = 0.0       # how far the clock has dropped at this step's draw, 0 (boost) to 1
    in_situ: InSitu | None = None   # how much slower SM-holding communication runs beside compute
    caveat: str = ""            # what of this entry was not measured on the chip itself, said beside its figures

    def clock_slowdown(self, kind: str) -> float:
        """How much longer the compute of op `kind` takes at the step's clock than at boost."""
        if not self.throttle or self.power is None:
            return 1.0
        return 1.0 + (self.power.slowdown.get(kind, 1.0) - 1.0) * self.throttle

    @property
    def comm_cores(self) -> tuple[int, str]:
        """What an all-to-all backend's `sms` count, and how many the chip has: its separate vector
        cores where it has them (Ascend AIV), else its SMs."""
        return (self.vector_cores, "vector cores") if self.vector_cores else (self.sm_count, "SMs")

    def eff(self, kind: str, m: float = 0.0, n: float = 0.0, k: float = 0.0) -> float:
        try:
            return self.curve(kind).at(m, n, k)
        except KeyError:
            raise UserError(f"hardware {self.name}: no efficiency entry {kind!r} "
                            f"(has {', '.join(sorted(self.efficiency))})") from None

    def has_curve(self, kind: str) -> bool:
        """Whether `curve(kind)` answers (the kind's own curve or its family's)."""
        return kind in self.efficiency or kind in CURVE_FALLBACK

    def curve(self, kind: str) -> EffCurve:
        """The efficiency curve of an op kind; a kind the entry has no curve for falls back to its
        family's (a masked grouped GEMM to the grouped GEMM curve)."""
        if kind not in self.efficiency and kind in CURVE_FALLBACK:
            kind = CURVE_FALLBACK[kind]
        return self.efficiency[kind]

    def backend(self, name: str) -> CommBackend:
        try:
            return self.comm[name]
        except KeyError:
            raise UserError(f"hardware {self.name} has no communication backend {name!r} "
                            f"(has: {', '.join(sorted(self.comm))})") from None


# ----------------------------------------------------------------------------- models
@dataclass(frozen=True)
class Model:
    key: str
    name: str
    attention: str          # "mla" or "gqa"
    vocab_size: int
    hidden: int
    intermediate: int       # dense MLP width
    moe_intermediate: int   # one expert's width
    layers: int
    dense_layers: int       # leading layers with a dense MLP instead of MoE
    heads: int
    routed_experts: int
    shared_experts: int
    activated_experts: int  # top-k
    expert_groups: int      # node-limited routing: groups ...
    limited_groups: int     # ... of which each token may use this many
    # MLA
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    # GQA
    kv_heads: int = 0
    head_dim: int = 0
    source: str = ""
    aliases: tuple[str, ...] = ()

    @property
    def group_limited(self) -> bool:
        """Whether a token's experts are limited to some of the expert groups (DeepSeek-V3's routing)."""
        return self.expert_groups > 1 and self.limited_groups < self.expert_groups

    @property
    def moe_layers(self) -> int:
        return self.layers - self.dense_layers

    @property
    def kv_cache_elems(self) -> int:
        """Cached elements per token per layer (latent + rope key for MLA, K and V for GQA)."""
        if self.attention == "mla":
            return self.kv_lora_rank + self.qk_rope_head_dim
        return 2 * self.kv_heads * self.head_dim


# ----------------------------------------------------------------------------- schema
# field -> (unit kind or python type, required)
_HW_FIELDS: dict[str, tuple[str, bool]] = {
    "display": ("str", True), "sm_count": ("int", True), "fp8_tflops": ("flops", False),
    "int8_tflops": ("flops", False), "dies_per_package": ("int", False), "vector_cores": ("int", False),
    "bf16_tflops": ("flops", True), "hbm_gb": ("size", True), "hbm_gbps": ("bandwidth", True),
    "scaleup_gbps": ("bandwidth", True), "scaleup_domain": ("int", True),
    "scaleout_gbps": ("bandwidth", True), "pcie_gbps": ("bandwidth", True),
    "gpus_per_node": ("int", True), "cpu_launch_us": ("time", True), "source": ("str", True),
    "aliases": ("list", False), "base": ("str", False), "abstract": ("bool", False),
    "efficiency": ("table", True), "comm": ("table", True), "power": ("table", False),
    "in_situ": ("table", False), "caveat": ("str", False),
}
_IN_SITU_FIELDS: dict[str, tuple[str, bool]] = {"slowdown": ("count", True), "source": ("str", True)}
_POWER_FIELDS: dict[str, tuple[str, bool]] = {
    "limit_w": ("count", True), "compute_w": ("count", True), "memory_w": ("count", True),
    "idle_w": ("count", True), "saturate": ("fraction", True), "slowdown": ("table", True),
    "source": ("str", True),
}
_EFF_FIELDS = {"max": ("fraction", True), "m_half": ("count", False), "m_pow": ("count", False),
               "n_half": ("count", False), "k_half": ("count", False), "floor_us": ("time", False),
               "hbm": ("fraction", False), "blend": ("count", False),
               "source": ("str", False)}
_COMM_FIELDS: dict[str, tuple[str, bool]] = {
    "link": ("str", True), "sms": ("int", True), "bw_eff": ("fraction", True),
    "latency_us": ("time", True), "cpu_block_us": ("time", True), "per_message_us": ("time", True),
    "fused": ("bool", True), "source": ("str", True), "node_dedup": ("bool", False),
    "rank_dedup": ("bool", False), "releases": ("table", False), "release": ("str", False),
    "expert_layout": ("str", False),
}
_RELEASE_FIELDS: dict[str, tuple[str, bool]] = {
    "unit": ("str", True), "dispatch": ("table", True), "combine": ("table", True),
    "link_gbps": ("bandwidth", True), "source": ("str", True), "ref_tokens": ("count", False),
    "sms": ("int", False), "in_situ": ("bool", False),
}
_MODEL_FIELDS: dict[str, tuple[str, bool]] = {
    "display": ("str", True), "attention": ("str", True), "vocab_size": ("int", True),
    "hidden": ("int", True), "intermediate": ("int", True), "moe_intermediate": ("int", True),
    "layers": ("int", True), "dense_layers": ("int", True), "heads": ("int", True),
    "routed_experts": ("int", True), "shared_experts": ("int", True),
    "activated_experts": ("int", True), "expert_groups": ("int", True),
    "limited_groups": ("int", True), "q_lora_rank": ("int", False), "kv_lora_rank": ("int", False),
    "qk_nope_head_dim": ("int", False), "qk_rope_head_dim": ("int", False),
    "v_head_dim": ("int", False), "kv_heads": ("int", False), "head_dim": ("int", False),
    "source": ("str", True), "aliases": ("list", False), "base": ("str", False),
    "abstract": ("bool", False),
}
_MLA_REQUIRED = ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
_GQA_REQUIRED = ("kv_heads", "head_dim")
_LINKS = ("scaleout", "scaleup", "pcie")


def normalise(name: str) -> str:
    return re.sub(r"[\s_.\-]+", "", name.strip().lower())


# The largest count a catalog entry may hold (layers, experts, hidden size, vocabulary, SMs): far past any
# model or GPU, and small enough that the arrays sized by it fit in memory.
MAX_WHOLE = 1_000_000


def _coerce(value: Any, kind: str, where: str) -> Any:
    if kind == "str":
        if not isinstance(value, str):
            raise UserError(f"{where}: expected text, got {value!r}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, got {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WHOLE:
            raise UserError(f"{where}: expected a whole number from 0 to {MAX_WHOLE:,}, got {value!r}")
        return value
    if kind == "list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UserError(f"{where}: expected a list of names, got {value!r}")
        return tuple(value)
    if kind == "table":
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a table, got {value!r}")
        return value
    number = parse_quantity(value, kind, where)
    if number < 0:
        raise UserError(f"{where}: must not be negative, got {value!r}")
    if number < 1e-3 and kind in ("flops", "bandwidth"):
        raise UserError(f"{where}: a rate must be positive (at least 0.001 TFLOPS or GB/s), got {value!r}")
    if kind == "fraction" and number > 1.0:
        raise UserError(f"{where}: a fraction must lie in [0, 1], got {value!r}")
    return number


def _check(entry: dict, schema: dict[str, tuple[str, bool]], where: str, need_required: bool = True) -> dict:
    unknown = sorted(set(entry) - set(schema))
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r} (known keys: {', '.join(sorted(schema))})")
    out = {k: _coerce(v, schema[k][0], f"{where}.{k}") for k, v in entry.items()}
    if need_required:
        missing = [k for k, (_, req) in schema.items() if req and k not in out]
        if missing:
            raise UserError(f"{where}: missing field {missing[0]!r}")
    return out


def _read_table_file(path: Path | Any, what: str) -> dict[str, dict]:
    """Parse a TOML or JSON catalog file into {key: entry}."""
    name = getattr(path, "name", str(path))
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{what} file {path}: no such file") from None
    except OSError as exc:
        raise UserError(f"{what} file {path}: cannot read ({exc.strerror or exc})") from None
    try:
        if name.endswith(".json"):
            data = json.loads(raw)
        else:
            data = tomllib.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        kind = "JSON" if name.endswith(".json") else "TOML"
        raise UserError(f"{what} file {path}: not valid {kind} ({exc})") from None
    if what == "model" and name.endswith(".json"):
        from .hfconfig import is_hf_config, model_entry      # a Hugging Face config.json, as users have it
        if is_hf_config(data):
            return model_entry(data, path if isinstance(path, Path) else Path(name))
    if not isinstance(data, dict) or not data or not all(isinstance(v, dict) for v in data.values()):
        raise UserError(f"{what} file {path}: expected one table per entry, e.g. [my-gpu] ...")
    return data


def _resolve_bases(raw: dict[str, dict], what: str, src: str) -> dict[str, dict]:
    """Merge each entry over its `base` chain (tables merged one level deep)."""
    out: dict[str, dict] = {}

    def merged(key: str, seen: tuple[str, ...]) -> dict:
        if key in out:
            return out[key]
        if key in seen:
            raise UserError(f"{what} file {src}: entry {key!r} inherits from itself")
        entry = dict(raw[key])
        base = entry.pop("base", None)
        if base is not None:
            if base not in raw:
                raise UserError(f"{what} file {src}: entry {key!r} has base {base!r}, which is not defined")
            parent = {k: v for k, v in merged(base, seen + (key,)).items() if k not in ("abstract", "aliases")}
            for k, v in entry.items():
                if isinstance(v, dict) and isinstance(parent.get(k), dict):
                    sub = dict(parent[k])
                    for kk, vv in v.items():
                        sub[kk] = {**sub[kk], **vv} if isinstance(vv, dict) and isinstance(sub.get(kk), dict) else vv
                    parent[k] = sub
                else:
                    parent[k] = v
            entry = parent
        out[key] = entry
        return entry

    for key in raw:
        merged(key, ())
    return out


def _build_hardware(key: str, e: dict, src: str) -> Hardware:
    where = f"hardware {key!r} ({src})"
    e = _check(e, _HW_FIELDS, where)
    eff = {}
    for kind, curve in e["efficiency"].items():
        c = _check(curve if isinstance(curve, dict) else {"max": curve}, _EFF_FIELDS, f"{where}.efficiency.{kind}")
        eff[kind] = EffCurve(max=c["max"], m_half=c.get("m_half", 0.0), floor_us=c.get("floor_us", 0.0),
                             n_half=c.get("n_half", 0.0), k_half=c.get("k_half", 0.0), m_pow=c.get("m_pow", 1.0),
                             hbm=c.get("hbm", 0.0), blend=c.get("blend", 0.0))
        if eff[kind].max <= 0:
            raise UserError(f"{where}.efficiency.{kind}.max: must be above 0 (a share of the peak the op reaches)")
        if 0 < eff[kind].blend < 1:
            raise UserError(f"{where}.efficiency.{kind}.blend: 0 (the larger of compute and memory) or a p-norm "
                            f"p >= 1, got {eff[kind].blend:g}")
    for need in ("gemm", "grouped_gemm", "attention", "attention_decode", "hbm", "scaleup", "scaleout"):
        if need not in eff:
            raise UserError(f"{where}: missing field 'efficiency.{need}'")
    comm = {}
    for name, spec in e["comm"].items():
        c = _check(spec, _COMM_FIELDS, f"{where}.comm.{name}")
        if c["link"] not in _LINKS:
            raise UserError(f"{where}.comm.{name}.link: expected one of {', '.join(_LINKS)}, got {c['link']!r}")
        if c.get("expert_layout", "contiguous") not in ("contiguous", "masked"):
            raise UserError(f"{where}.comm.{name}.expert_layout: expected contiguous or masked, "
                            f"got {c['expert_layout']!r}")
        c["releases"] = {r: _build_release(r, spec_r, f"{where}.comm.{name}.releases.{r}")
                         for r, spec_r in c.get("releases", {}).items()}
        if c["releases"] and c.get("release", "") not in c["releases"]:
            raise UserError(f"{where}.comm.{name}.release: name one of its releases "
                            f"({', '.join(sorted(c['releases']))}), got {c.get('release')!r}")
        if c["bw_eff"] <= 0:
            raise UserError(f"{where}.comm.{name}.bw_eff: must be above 0 (the share of the link's bandwidth reached)")
        comm[name] = CommBackend(name=name, **c)
    if e["sm_count"] <= 0:
        raise UserError(f"{where}.sm_count: must be positive")
    formats = [f for f in ("fp8", "int8") if f"{f}_tflops" in e]
    if len(formats) != 1:
        raise UserError(f"{where}: give the dense 8-bit peak as exactly one of 'fp8_tflops' or 'int8_tflops' "
                        f"(got {' and '.join(formats) or 'neither'})")
    if e.get("dies_per_package", 1) < 1:
        raise UserError(f"{where}.dies_per_package: must be at least 1")
    hw = Hardware(
        power=_build_power(e["power"], f"{where}.power") if "power" in e else None,
        in_situ=_build_in_situ(e["in_situ"], f"{where}.in_situ") if "in_situ" in e else None,
        key=key, name=e["display"], sm_count=e["sm_count"], q8_tflops=e[f"{formats[0]}_tflops"],
        q8_format=formats[0], dies_per_package=e.get("dies_per_package", 1), vector_cores=e.get("vector_cores", 0),
        bf16_tflops=e["bf16_tflops"], hbm_gb=e["hbm_gb"], hbm_gbps=e["hbm_gbps"],
        scaleup_gbps=e["scaleup_gbps"], scaleup_domain=e["scaleup_domain"],
        scaleout_gbps=e["scaleout_gbps"], pcie_gbps=e["pcie_gbps"], gpus_per_node=e["gpus_per_node"],
        cpu_launch_us=e["cpu_launch_us"], efficiency=eff, comm=comm, source=e["source"],
        aliases=e.get("aliases", ()), caveat=e.get("caveat", ""),
    )
    unknown = sorted(set(hw.power.slowdown) - set(eff) - set(CURVE_FALLBACK)) if hw.power else []
    if unknown:
        raise UserError(f"{where}.power.slowdown: {unknown[0]!r} is not an op kind of this hardware "
                        f"(its efficiency curves: {', '.join(sorted(eff))})")
    cores, what = hw.comm_cores
    for name, b in comm.items():
        if b.sms > cores:
            raise UserError(f"{where}.comm.{name}.sms: {b.sms} exceed the {cores} {what} on the chip")
    return hw


def _build_power(spec: dict, where: str) -> Power:
    p = _check(spec, _POWER_FIELDS, where)
    slow = {k: _coerce(v, "count", f"{where}.slowdown.{k}") for k, v in p["slowdown"].items()}
    if any(v < 1 for v in slow.values()):
        raise UserError(f"{where}.slowdown: a slowdown is a time ratio >= 1")
    if not p["idle_w"] <= p["memory_w"] < p["limit_w"] < p["compute_w"]:
        raise UserError(f"{where}: expected idle_w <= memory_w < limit_w < compute_w")
    if p["saturate"] <= 0:
        raise UserError(f"{where}.saturate: must be positive")
    return Power(limit_w=p["limit_w"], compute_w=p["compute_w"], memory_w=p["memory_w"], idle_w=p["idle_w"],
                 saturate=p["saturate"], slowdown=slow, source=p["source"])


def _build_in_situ(spec: dict, where: str) -> InSitu:
    p = _check(spec, _IN_SITU_FIELDS, where)
    if not 0 <= p["slowdown"] < 10:
        raise UserError(f"{where}.slowdown: a relative slowdown in [0, 10), got {p['slowdown']}")
    return InSitu(slowdown=p["slowdown"], source=p["source"])


def _build_release(name: str, spec: Any, where: str) -> Release:
    if not isinstance(spec, dict):
        raise UserError(f"{where}: expected a table")
    r = _check(spec, _RELEASE_FIELDS, where)
    if r["unit"] not in ("GB/s", "us"):
        raise UserError(f"{where}.unit: expected 'GB/s' or 'us', got {r['unit']!r}")
    if r["unit"] == "us" and not r.get("ref_tokens"):
        raise UserError(f"{where}: figures in us need ref_tokens (the benchmark's tokens per rank)")
    pts: dict[str, dict[int, float]] = {}
    for op in ("dispatch", "combine"):
        table = {}
        for ep, v in r[op].items():
            if not str(ep).isdigit() or int(ep) < 1:
                raise UserError(f"{where}.{op}: keys are EP sizes (whole numbers), got {ep!r}")
            table[int(ep)] = _coerce(v, "bandwidth" if r["unit"] == "GB/s" else "time", f"{where}.{op}.{ep}")
            if table[int(ep)] <= 0:
                raise UserError(f"{where}.{op}.{ep}: must be positive")
        if not table:
            raise UserError(f"{where}.{op}: at least one EP size")
        pts[op] = table
    return Release(name=name, unit=r["unit"], dispatch=pts["dispatch"], combine=pts["combine"],
                   link_gbps=r["link_gbps"], source=r["source"], ref_tokens=r.get("ref_tokens", 0.0),
                   sms=r.get("sms"), in_situ=bool(r.get("in_situ", False)))


def _release_to_dict(r: Release) -> dict[str, Any]:
    out = {"unit": r.unit, "dispatch": {str(k): v for k, v in r.dispatch.items()},
           "combine": {str(k): v for k, v in r.combine.items()}, "link_gbps": r.link_gbps, "source": r.source}
    if r.ref_tokens:
        out["ref_tokens"] = r.ref_tokens
    if r.sms is not None:
        out["sms"] = r.sms
    if r.in_situ:
        out["in_situ"] = True
    return out


def _comm_to_dict(b: CommBackend) -> dict[str, Any]:
    out = {f: getattr(b, f) for f in _COMM_FIELDS if f not in ("releases", "release")}
    if b.releases:
        out["releases"] = {k: _release_to_dict(r) for k, r in b.releases.items()}
        out["release"] = b.release
    return out


def _build_model(key: str, e: dict, src: str) -> Model:
    where = f"model {key!r} ({src})"
    e = _check(e, _MODEL_FIELDS, where)
    if e["attention"] not in ("mla", "gqa"):
        raise UserError(f"{where}.attention: expected 'mla' or 'gqa', got {e['attention']!r}")
    for f in (_MLA_REQUIRED if e["attention"] == "mla" else _GQA_REQUIRED):
        if not e.get(f):
            raise UserError(f"{where}: missing field {f!r} (needed by {e['attention'].upper()} attention)")
    if e["dense_layers"] > e["layers"]:
        raise UserError(f"{where}: dense_layers ({e['dense_layers']}) exceeds layers ({e['layers']})")
    if e["activated_experts"] > e["routed_experts"]:
        raise UserError(f"{where}: activated_experts exceeds routed_experts")
    if e.get("expert_groups", 1) > max(1, e["routed_experts"]) or e.get("limited_groups", 1) > e.get("expert_groups", 1):
        raise UserError(f"{where}: expected limited_groups <= expert_groups <= routed_experts, got "
                        f"{e.get('limited_groups', 1)} / {e.get('expert_groups', 1)} / {e['routed_experts']}")
    kw = {k: v for k, v in e.items() if k not in ("display", "base", "abstract")}
    return Model(key=key, name=e["display"], **kw)


def _load(path: Path | Any, what: str, build: Callable[[str, dict, str], Any],
          builtin: Path | Any | None = None) -> dict[str, Any]:
    """The entries of a catalog file; a user file's entries may name a built-in entry as their base."""
    raw = _read_table_file(path, what)
    src = getattr(path, "name", str(path))
    if builtin is not None:
        known = _resolve_bases(_read_table_file(builtin, what), what, getattr(builtin, "name", str(builtin)))
        by_name = {normalise(k): k for k in known}
        for entry in list(raw.values()):
            base = entry.get("base")
            if isinstance(base, str) and base not in raw and normalise(base) in by_name:
                entry["base"] = f"builtin:{by_name[normalise(base)]}"
                raw[entry["base"]] = {**known[by_name[normalise(base)]], "abstract": True}
    merged = _resolve_bases(raw, what, src)
    return {k: build(k, v, src) for k, v in merged.items() if not v.get("abstract", False)}


@lru_cache(maxsize=None)
def builtin_hardware() -> dict[str, Hardware]:
    return _load(DATA / "hardware.toml", "hardware", _build_hardware)


@lru_cache(maxsize=None)
def builtin_models() -> dict[str, Model]:
    return _load(DATA / "models.toml", "model", _build_model)


def _lookup(name: str, table: dict[str, Any], what: str, flag: str) -> Any:
    want = normalise(name)
    for key, item in table.items():
        if want == normalise(key) or want == normalise(item.name) or want in {normalise(a) for a in item.aliases}:
            return item
    known = ", ".join(sorted(table))
    raise UserError(f"unknown {what} {name!r}; known: {known} (or pass your own with {flag})")


def load_hardware(name: str | None = None, path: str | Path | None = None) -> Hardware:
    """Resolve `name` in the built-in catalog, or in `path` (which may also hold one entry only)."""
    if path is not None:
        table = _load(Path(path), "hardware", _build_hardware, DATA / "hardware.toml")
        if name is None:
            if len(table) != 1:
                raise UserError(f"hardware file {path} holds {len(table)} entries; name one with --hardware")
            return next(iter(table.values()))
        return _lookup(name, table, "hardware", "--hardware-file")
    return _lookup(name or "h800", builtin_hardware(), "hardware", "--hardware-file")


def load_model(name: str | None = None, path: str | Path | None = None) -> Model:
    if path is not None:
        if Path(path).is_dir() and (Path(path) / "config.json").is_file():     # a model repo's folder
            path = Path(path) / "config.json"
        table = _load(Path(path), "model", _build_model, DATA / "models.toml")
        if name is None:
            if len(table) != 1:
                raise UserError(f"model file {path} holds {len(table)} entries; name one with --model")
            return next(iter(table.values()))
        return _lookup(name, table, "model", "--model-file")
    return _lookup(name or "deepseek-v3", builtin_models(), "model", "--model-file")


def hardware_to_dict(hw: Hardware) -> dict[str, Any]:
    """A hardware entry as a plain table that `load_hardware(path=...)` reads back."""
    return {hw.key: {
        "display": hw.name, "aliases": list(hw.aliases), "source": hw.source,
        "sm_count": hw.sm_count, f"{hw.q8_format}_tflops": hw.q8_tflops, "bf16_tflops": hw.bf16_tflops,
        **({"dies_per_package": hw.dies_per_package} if hw.dies_per_package > 1 else {}),
        **({"vector_cores": hw.vector_cores} if hw.vector_cores else {}),
        "hbm_gb": hw.hbm_gb, "hbm_gbps": hw.hbm_gbps, "scaleup_gbps": hw.scaleup_gbps,
        "scaleup_domain": hw.scaleup_domain, "scaleout_gbps": hw.scaleout_gbps,
        "pcie_gbps": hw.pcie_gbps, "gpus_per_node": hw.gpus_per_node, "cpu_launch_us": hw.cpu_launch_us,
        "efficiency": {k: {"max": c.max, "m_half": c.m_half, "m_pow": c.m_pow, "n_half": c.n_half,
                           "k_half": c.k_half, "floor_us": c.floor_us, **({"hbm": c.hbm} if c.hbm else {}),
                           **({"blend": c.blend} if c.blend else {})}
                       for k, c in hw.efficiency.items()},
        "comm": {k: _comm_to_dict(b) for k, b in hw.comm.items()},
        **({"power": {**{f: getattr(hw.power, f) for f in _POWER_FIELDS}, "slowdown": dict(hw.power.slowdown)}}
           if hw.power else {}),
        **({"in_situ": {"slowdown": hw.in_situ.slowdown, "source": hw.in_situ.source}} if hw.in_situ else {}),
        **({"caveat": hw.caveat} if hw.caveat else {}),
    }}


def hardware_of_device(device_name: str) -> Hardware:
    """The catalog GPU a profiler trace's deviceProperties name (H100, H800, ...), or a UserError."""
    n = normalise(device_name)
    for key in ("h800", "h200", "h100", "h20", "b200"):
        if key in n:
            return load_hardware(key)
    raise UserError(f"cannot tell the hardware from the trace ({device_name or 'no deviceProperties'}); "
                    "name it with --hardware")


def model_to_dict(m: Model) -> dict[str, Any]:
    """A model entry as a plain table that `load_model(path=...)` reads back."""
    fields_ = {k: getattr(m, k) for k in _MODEL_FIELDS if k not in ("display", "base", "abstract", "aliases")}
    return {m.key: {"display": m.name, "aliases": list(m.aliases), **fields_}}


def hardware_from_dict(table: dict[str, Any], src: str) -> Hardware:
    """The one entry of a table as `hardware_to_dict` writes it (e.g. a trace's otherData)."""
    return _one(table, src, "hardware", _build_hardware)


def model_from_dict(table: dict[str, Any], src: str) -> Model:
    """The one entry of a table as `model_to_dict` writes it."""
    return _one(table, src, "model", _build_model)


def _one(table: Any, src: str, what: str, build: Callable[[str, dict, str], Any]) -> Any:
    if not isinstance(table, dict) or len(table) != 1 or not isinstance(next(iter(table.values())), dict):
        raise UserError(f"{src}: expected one {what} entry {{key: fields}}")
    ((key, entry),) = table.items()
    return build(key, dict(entry), src)


__all__ = ["EffCurve", "CommBackend", "Release", "Hardware", "Model", "load_hardware", "load_model", "builtin_hardware",
           "builtin_models", "hardware_of_device", "hardware_to_dict", "hardware_from_dict", "model_to_dict",
           "model_from_dict", "normalise"]
