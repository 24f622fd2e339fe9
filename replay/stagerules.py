"""Tracegen's stage names for observed labels (data/stages.toml, extendable with --stages FILE): an
annotation's stage label ('attn(F)', 'L3:ATTN(0)', 'DeepseekV2MoE') or, without one, a kernel's
subclass -> ATTN, SHARED, DISPATCH, MLP, COMBINE, ... Used by structure recovery (styles whose
stage names are free text) and by compare / whatif (stage by stage)."""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from tracegen.base.contract import STAGE_STREAM
from tracegen.base.errors import UserError


@dataclass(frozen=True)
class StageRules:
    annotation: tuple[tuple[re.Pattern[str], str], ...]
    kernel: tuple[tuple[re.Pattern[str], str], ...]
    parent: tuple[tuple[str, str], ...] = ()     # a finer stage -> the stage it is part of (stages.toml [parents])
    router: re.Pattern[str] | None = None        # an MoE layer's router kernel, where no all-to-all marks it ([moe])


@lru_cache(maxsize=8)
def load_stage_rules(user_file: str | None = None) -> StageRules:
    texts = [(resources.files("replay") / "data" / "stages.toml").read_text("utf-8")]
    if user_file:
        try:
            texts.insert(0, Path(user_file).read_text("utf-8"))
        except OSError as exc:
            raise UserError(f"stage rules {user_file}: cannot read ({exc.strerror or exc})") from None
    ann, ker, parent, router = [], [], {}, None
    for body in reversed(texts):                 # the built-in parents first, a user's file may replace them
        try:
            raw = tomllib.loads(body)
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"stage rules: not valid TOML ({exc})") from None
        for child, up in raw.get("parents", {}).items():
            if child not in STAGE_STREAM or up not in STAGE_STREAM:
                raise UserError(f"stage rules: parents maps a stage to a stage, each one of {', '.join(STAGE_STREAM)}; "
                                f"got {child!r} = {up!r}")
            parent[child] = up
    for body in texts:
        raw = tomllib.loads(body)
        if router is None and raw.get("moe", {}).get("router"):       # a user's file first: theirs wins
            router = _regex(raw["moe"]["router"], "[moe] router")
        for r in raw.get("annotation", []):
            if r.get("stage") not in STAGE_STREAM:
                raise UserError(f"stage rules: stage must be one of {', '.join(STAGE_STREAM)}, got {r.get('stage')!r}")
            ann.append((re.compile(f"(?:{r['regex']})", re.I), r["stage"]))
        for r in raw.get("kernel", []):
            ker.append((re.compile(f"(?:{r['subclass']})", re.I), r["stage"]))
    return StageRules(tuple(ann), tuple(ker), tuple(parent.items()), router)


def _regex(pattern: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern, re.I)
    except (re.error, TypeError) as exc:
        raise UserError(f"stage rules: {where} is not a regular expression ({exc})") from None


def canonical_stage(label: str, rules: StageRules) -> str | None:
    """tracegen's stage name for an observed label such as 'attn(F)' or 'ATTN(0)' (whole label)."""
    return _match(label.split("(")[0].strip(), rules, whole=True)


def stage_of(label: str, rules: StageRules | None = None) -> str | None:
    """Tracegen's stage for free text (a module or op name): the first annotation rule found anywhere
    in it (canonical_stage matches whole labels)."""
    return _match(label, rules or load_stage_rules(), whole=False)


def _match(text: str, rules: StageRules, whole: bool) -> str | None:
    if text.upper() in STAGE_STREAM:
        return text.upper()
    for rx, stage in rules.annotation:
        if (rx.fullmatch(text) if whole else rx.search(text)):
            return stage
    return None


__all__ = ["StageRules", "load_stage_rules", "canonical_stage", "stage_of"]
