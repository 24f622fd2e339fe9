"""The per-op table and totals of `tracegen estimate`: time per layer for each op row, layers,
sums with and without overlap, TPOT and throughput per GPU and per node."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from .catalog import Hardware, Model
from .cost import Timed, comm_sms, op_time
from .ops import layer_ops, tokens
from .step import HEAD, MTP_ROW, head_ops, mtp_plan, mtp_proj_ops
from .plan import Plan
from .power import compute_bound, draw
from .preset import Preset
from .target import Target


def row_label(name: str, model: Model) -> str:
    """An op row's name as printed: the attention rows say GQA for a model without MLA."""
    return name.replace("MLA", "GQA") if model.attention != "mla" else name


ROW_ORDER = ("DenseMLA", "DenseMLP", "MLA", "Gate", "SharedExpert", "RoutedExpert", "Dispatch", "Combine", HEAD,
             MTP_ROW, "Scheduler")


@dataclass(frozen=True)
class Row:
    name: str
    ms: float                  # per layer
    layers: int
    terms: dict[str, float]    # ms per cost term, summed over the row's ops

    @property
    def total_ms(self) -> float:
        return self.ms * self.layers


@dataclass(frozen=True)
class Estimate:
    model: Model
    hardware: Hardware
    plan: Plan
    preset: Preset
    rows: list[Row]
    dense_ops: list[Timed]
    moe_ops: list[Timed]
    sum_overlap_ms: float
    sum_ms: float
    tokens_per_step_per_gpu: float
    extra: dict[str, float] = field(default_factory=dict)

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    @property
    def comm_slack_ms(self) -> float:
        """Per MoE layer: attention + shared expert time left after dispatch + combine
        (the seed's 'time budget'; negative: communication cannot be hidden)."""
        def ms(name: str) -> float:
            return next((r.ms for r in self.rows if r.name == name), 0.0)
        return ms("MLA") + ms("SharedExpert") - ms("Dispatch") - ms("Combine")

    @property
    def tokens_per_s_per_gpu_overlap(self) -> float:
        return self.tokens_per_step_per_gpu * 1e3 / self.sum_overlap_ms

    @property
    def tokens_per_s_per_gpu(self) -> float:
        return self.tokens_per_step_per_gpu * 1e3 / self.sum_ms

    def to_dict(self) -> dict:
        p = self.plan
        out = {
            "model": self.model.name, "hardware": self.hardware.name, "preset": self.preset.name,
            "plan": {**{k: getattr(p, k) for k in p.__dataclass_fields__}, "ep": p.ep_size},   # 0 = tp x dp, said
            "gpus": p.num_gpus, "nodes": p.nodes, "ep": p.ep_size,
            "rows": [{"op": r.name, "label": row_label(r.name, self.model), "ms_per_layer": r.ms, "layers": r.layers,
                      "total_ms": r.total_ms, "terms_ms": r.terms} for r in self.rows],
            "sum_overlap_ms": self.sum_overlap_ms, "sum_ms": self.sum_ms,
            "tokens_per_s_per_gpu_overlap": self.tokens_per_s_per_gpu_overlap,
            "tokens_per_s_per_gpu": self.tokens_per_s_per_gpu,
            "tokens_per_s_per_node_overlap": self.tokens_per_s_per_gpu_overlap * p.gpus_per_node,
            "tokens_per_s_per_node": self.tokens_per_s_per_gpu * p.gpus_per_node,
        }
        if self.hardware.dies_per_package > 1:     # sources count per package ("per NPU")
            n = self.hardware.dies_per_package
            out.update(dies_per_package=n, tokens_per_s_per_package_overlap=self.tokens_per_s_per_gpu_overlap * n,
                       tokens_per_s_per_package=self.tokens_per_s_per_gpu * n)
        if p.phase == "decode":
            # a step gives each request 1 + accepted drafts tokens: TPOT is the step over that
            a = p.accepted_per_request
            out.update(tpot_overlap_ms=self.sum_overlap_ms / a, tpot_ms=self.sum_ms / a,
                       tps_per_user_overlap=1e3 * a / self.sum_overlap_ms, tps_per_user=1e3 * a / self.sum_ms,
                       comm_slack_ms=self.comm_slack_ms, step_overlap_ms=self.sum_overlap_ms, step_ms=self.sum_ms,
                       tokens_per_request_per_step=a)
        else:
            out.update(prefill_latency_overlap_ms=self.sum_overlap_ms, prefill_latency_ms=self.sum_ms)
        out.update(self.extra)
        return out


def _rows(timed: list[Timed], layers: int) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    for t in timed:
        r = rows.get(t.work.row)
        terms = dict(r.terms) if r else {}
        for k, v in t.terms.items():
            terms[k] = terms.get(k, 0.0) + v
        rows[t.work.row] = Row(t.work.row, (r.ms if r else 0.0) + t.ms, layers, terms)
    return rows


def overlapped_layer_ms(ops: list[Timed], plan: Plan, hw: Hardware, preset: Preset) -> float:
    """One MoE layer with its all-to-all hidden behind compute as far as physics allows."""
    compute = sum(t.ms for t in ops if t.work.is_compute or t.work.kind == "allreduce")
    comm = sum(t.ms for t in ops if t.work.kind == "a2a")
    if preset.overlap == "compute_only":
        return compute
    # While the all-to-all runs it holds its SMs: compute progresses at the remaining share.
    share = (hw.sm_count - comm_sms(plan, hw, preset)) / hw.sm_count
    if compute <= comm * share:
        return comm
    return comm + (compute - comm * share)


def estimate(target: Target) -> Estimate:
    """The table and totals at the boost clock, then, where the step would draw more than the board's
    limit (power.py), again at the clock that draw leaves."""
    preset = target.preset
    est, parts = _estimate(target)
    power = est.hardware.power
    if not preset.power_limit or power is None:
        return est
    hot = sum(n * t.ms for ts, n in parts for t in ts if compute_bound(t.terms, t.work.kind, power))
    busy = sum(n * t.ms for ts, n in parts for t in ts if t.work.kind != "a2a")
    d = draw(hot, busy, est.sum_overlap_ms, power)
    if d.throttle > 0:
        est, _ = _estimate(target.with_hardware(replace(target.hardware, throttle=d.throttle)))
    est.extra.update({f"power_{k}": v for k, v in d.to_dict().items()})
    return est


def _estimate(target: Target) -> tuple[Estimate, list[tuple[list[Timed], int]]]:
    """The estimate at the target hardware's clock, and its ops with how often each list runs per step."""
    model, hw, preset, plan = target
    hw = preset.apply(hw)
    target = target.with_hardware(hw)
    dense_ops = [op_time(w, plan, hw, preset) for w in layer_ops(target, dense=True)]
    moe_ops = [op_time(w, plan, hw, preset) for w in layer_ops(target, dense=False)]
    parts = [(dense_ops, model.dense_layers), (moe_ops, model.moe_layers)]
    rows = _rows(dense_ops, model.dense_layers) if model.dense_layers else {}
    rows.update(_rows(moe_ops, model.moe_layers))
    dense_ms = sum(t.ms for t in dense_ops)
    moe_seq = sum(t.ms for t in moe_ops)
    sum_ms = model.dense_layers * dense_ms + model.moe_layers * moe_seq
    sum_overlap = model.dense_layers * dense_ms + model.moe_layers * overlapped_layer_ms(moe_ops, plan, hw, preset)
    if preset.step_terms:
        # per step: the LM head; the MTP module once per draft token; the CPU's scheduling time
        head = [op_time(w, plan, hw, preset) for w in head_ops(model, plan, tokens(model, plan, preset))]
        rows.update(_rows(head, 1))
        parts.append((head, 1))
        sum_ms += sum(t.ms for t in head)
        sum_overlap += sum(t.ms for t in head)
        if plan.mtp:
            mp = mtp_plan(plan)
            layer = [op_time(w, mp, hw, preset) for w in mtp_proj_ops(model, plan, preset)
                     + layer_ops(target.with_plan(mp), dense=False)]
            mhead = [op_time(w, mp, hw, preset) for w in head_ops(model, mp, tokens(model, mp, preset), MTP_ROW, "mtp_")]
            draft = [t if t.work.row == MTP_ROW else replace(t, work=replace(t.work, row=MTP_ROW)) for t in layer + mhead]
            rows.update(_rows(draft, plan.mtp))
            parts.append((draft, plan.mtp))
            sum_ms += plan.mtp * sum(t.ms for t in draft)
            sum_overlap += plan.mtp * (overlapped_layer_ms(layer, mp, hw, preset) + sum(t.ms for t in mhead))
        if plan.sched_ms:
            rows["Scheduler"] = Row("Scheduler", plan.sched_ms, 1, {"cpu_ms": plan.sched_ms})
            sum_ms += plan.sched_ms
            sum_overlap += plan.sched_ms
    ordered = [rows[n] for n in ROW_ORDER if n in rows]
    if plan.phase == "prefill":
        per_gpu = plan.dp * plan.batch * plan.seq_len / plan.num_gpus
    elif preset.decode_moe_tokens == "batch_per_gpu":
        per_gpu = plan.batch * plan.accepted_per_request
    else:
        per_gpu = plan.dp * plan.batch / plan.num_gpus * plan.accepted_per_request
    return Estimate(model, hw, plan, preset, ordered, dense_ops, moe_ops, sum_overlap, sum_ms, per_gpu), parts
