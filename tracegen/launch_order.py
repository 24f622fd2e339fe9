"""Launch orders as data: the sequence in which the CPU issues the stages of two micro-batches,
one cycle per MoE layer (SGLang's two-batch overlap keeps stages and yield points as data too).

An order file (TOML or JSON) has `phase` and `steps`, each step `[microbatch, stage, layer_offset]`;
offset -1 names the previous layer's stage, +1 the next one's. Built-in orders live in
data/orders/. Dense layers run one micro-batch after the other; TBO off runs stages in program
order with one micro-batch."""
from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .base.errors import UserError
from .catalog import DATA
from .opgraph import OpGraph

TBO_MODES = ("off", "proper", "improper")


@dataclass(frozen=True)
class Order:
    name: str
    phase: str
    steps: tuple[tuple[int, str, int], ...]


def _parse(raw: dict, src: str) -> Order:
    if not isinstance(raw, dict) or "steps" not in raw or "phase" not in raw:
        raise UserError(f"order file {src}: expected keys 'phase' and 'steps'")
    unknown = sorted(set(raw) - {"phase", "steps", "description"})
    if unknown:
        raise UserError(f"order file {src}: unknown key {unknown[0]!r}")
    steps = []
    for i, s in enumerate(raw["steps"]):
        if (not isinstance(s, list) or len(s) != 3 or not isinstance(s[0], int) or not isinstance(s[1], str)
                or not isinstance(s[2], int)):
            raise UserError(f"order file {src}: step {i + 1} must be [microbatch, stage, layer_offset], got {s!r}")
        steps.append((s[0], s[1].upper(), s[2]))
    return Order(name=src, phase=raw["phase"], steps=tuple(steps))


def load_order(tbo: str, phase: str, path: str | Path | None = None) -> Order | None:
    """The launch order for --tbo (None for off), or the user's --order file."""
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text("utf-8")
        except OSError as exc:
            raise UserError(f"order file {p}: cannot read ({exc.strerror or exc})") from None
        try:
            raw = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
        except ValueError as exc:
            raise UserError(f"order file {p}: not valid {'JSON' if p.suffix == '.json' else 'TOML'} ({exc})") from None
        return _parse(raw, str(p))
    if tbo not in TBO_MODES:
        raise UserError(f"--tbo must be one of {', '.join(TBO_MODES)}, got {tbo!r}")
    if tbo == "off":
        return None
    return _parse(tomllib.loads((DATA / "orders" / f"{phase}-{tbo}.toml").read_text("utf-8")), f"{phase}-{tbo}")


def unroll(graph: OpGraph, order: Order | None) -> list[tuple[int, int, str]]:
    """Every stage of the graph once, in CPU launch order; checks the order is complete and that
    no stage is launched before a stage it depends on (a stream would wait forever)."""
    plan = graph.plan
    seq: list[tuple[int, int, str]] = []
    moe = graph.moe_layers

    def in_program_order(layer: int) -> list[tuple[int, int, str]]:
        return [(layer, mb, s) for mb in range(plan.microbatches) for s in graph.layer_stages(layer)
                if (layer, mb, s) in graph.stages]

    # the step's tail (LM head, MTP module) runs after the model's layers, each layer's stages in
    # program order; dense layers (and every layer with TBO off) in place
    last = max(layer for layer in graph.layers if graph.layer_kind(layer) in ("dense", "moe"))
    tail = [layer for layer in graph.layers if layer > last]
    for layer in graph.layers:
        if layer not in tail and (graph.layer_kind(layer) == "dense" or order is None):
            seq += in_program_order(layer)
    if order is not None and moe:
        if plan.microbatches != 2:
            raise UserError(f"a launch order interleaves 2 micro-batches; the plan has {plan.microbatches} "
                            "(tracegen: set --microbatches 2; replay whatif: the observed stages carry "
                            f"{plan.microbatches} micro-batch label(s), so --launch-order does not apply)")
        if order.phase != plan.phase:
            raise UserError(f"order {order.name} is for {order.phase}, the plan is {plan.phase}")
        known = set(graph.layer_stages(moe[0]))
        for mb, stage, _ in order.steps:
            if stage not in known or mb not in (0, 1):
                raise UserError(f"order {order.name}: unknown step [{mb}, {stage!r}] "
                                f"(stages: {', '.join(sorted(known))}; micro-batches 0 and 1)")
        moe_set = set(moe)
        for i in range(len(moe) + 2):
            base = moe[0] - 1 + i
            for mb, stage, off in order.steps:
                key = (base + off, mb, stage)
                if key[0] in moe_set and key in graph.stages:
                    seq.append(key)
    for layer in tail:
        seq += in_program_order(layer)
    # completeness and dependency order
    pos: dict[tuple[int, int, str], int] = {}
    for i, key in enumerate(seq):
        if key in pos:
            raise UserError(f"order {order.name if order else 'off'}: stage {key[2]} of micro-batch {key[1]} "
                            f"in layer {key[0]} is launched twice")
        pos[key] = i
    for key, st in graph.stages.items():
        if key not in pos:
            raise UserError(f"order {order.name if order else 'off'}: never launches {key[2]} of micro-batch "
                            f"{key[1]} in layer {key[0]}")
        for dep in st.deps:
            if pos[dep] > pos[key]:
                raise UserError(f"order {order.name if order else 'off'}: launches {key[2]} of micro-batch {key[1]} "
                                f"(layer {key[0]}) before {dep[2]} of micro-batch {dep[1]} (layer {dep[0]}), "
                                f"which it needs")
    return seq
