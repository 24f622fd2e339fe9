"""Kernel-name taxonomy (data/taxonomy.toml, extendable with --taxonomy FILE): which GPU work is
computation, communication or memory traffic, and which CPU calls block or launch."""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from tracegen.base import contract
from tracegen.base.errors import UserError

CLASSES = ("compute", "comm", "memory", "other")


@dataclass(frozen=True)
class Taxonomy:
    rules: tuple[tuple[str, str, re.Pattern[str]], ...]
    blocking: re.Pattern[str]
    launch: re.Pattern[str]

    def classify_name(self, name: str) -> tuple[str, str]:
        for klass, sub, rx in self.rules:
            if rx.search(name):
                return klass, sub
        return "other", "unclassified"


def _compile(rx: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(rx, re.I)
    except re.error as exc:
        raise UserError(f"{where}: bad regex {rx!r} ({exc})") from None


def _read(text: str, src: str) -> tuple[list, list[str], list[str]]:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"taxonomy {src}: not valid TOML ({exc})") from None
    unknown = sorted(set(raw) - {"rule", "blocking", "launch"})
    if unknown:
        raise UserError(f"taxonomy {src}: unknown key {unknown[0]!r} (expected [[rule]], [blocking], [launch])")
    rules = []
    for i, r in enumerate(raw.get("rule", [])):
        where = f"taxonomy {src}: rule {i + 1}"
        if not isinstance(r, dict) or set(r) - {"class", "subclass", "regex"} or "regex" not in r or "class" not in r:
            raise UserError(f"{where}: needs 'class', 'regex' and optionally 'subclass'")
        if r["class"] not in CLASSES:
            raise UserError(f"{where}: class must be one of {', '.join(CLASSES)}, got {r['class']!r}")
        rules.append((r["class"], r.get("subclass", r["class"]), _compile(r["regex"], where)))
    blocking = raw.get("blocking", {}).get("regex", [])
    launch = raw.get("launch", {}).get("regex", [])
    return rules, blocking, launch


@lru_cache(maxsize=8)
def load_taxonomy(user_file: str | None = None) -> Taxonomy:
    rules, blocking, launch = _read((resources.files("replay") / "data" / "taxonomy.toml").read_text("utf-8"),
                                    "built-in")
    if user_file:
        p = Path(user_file)
        try:
            text = p.read_text("utf-8")
        except OSError as exc:
            raise UserError(f"taxonomy {p}: cannot read ({exc.strerror or exc})") from None
        u_rules, u_block, u_launch = _read(text, str(p))
        rules = u_rules + rules
        blocking = u_block + blocking
        launch = u_launch + launch
    either = lambda pats, src: _compile("|".join(f"(?:{p})" for p in pats) or "$^", src)  # noqa: E731
    return Taxonomy(tuple(rules), either(blocking, "taxonomy [blocking]"), either(launch, "taxonomy [launch]"))


def classify(events: pd.DataFrame, tax: Taxonomy) -> pd.DataFrame:
    """Add `klass` (compute/comm/memory/other/annotation/cpu) and `subclass` columns, plus CPU flags
    `blocking` and `launch`. tracegen's stage slices carry their class (`stage_stream`). Classified
    once per distinct (name, category, stage stream, stage, device), then broadcast."""
    cols = ("name", "cat", "stage_stream", "stage", "device")
    codes = [events[c].cat.codes.to_numpy().astype(np.int64) + 1 for c in cols]     # -1 (NaN) -> 0
    sizes = [len(events[c].cat.categories) + 1 for c in cols]
    key = np.ravel_multi_index(codes, sizes) if len(events) else np.zeros(0, dtype=np.int64)
    uniq, inverse = np.unique(key, return_inverse=True)
    cats = [[None] + list(events[c].cat.categories) for c in cols]
    klass, sub, block, launch = [], [], [], []
    for u in uniq:
        name, cat, stage_stream, stage, device = (cats[i][j] for i, j in enumerate(np.unravel_index(u, sizes)))
        name = "" if name is None else str(name)
        if device != "gpu":
            klass.append("cpu")
            sub.append("")
            block.append(bool(tax.blocking.search(name)) or cat == contract.CAT_WAIT)
            launch.append(bool(tax.launch.search(name)) or cat == contract.CAT_LAUNCH)
            continue
        block.append(False)
        launch.append(False)
        if stage_stream in (contract.COMPUTE, contract.COMM):
            k, sb = stage_stream, str(stage)
        else:
            k, sb = tax.classify_name(name)
        if cat in ("gpu_memcpy", "gpu_memset") and k not in ("comm", "memory"):
            # copies and fills: memory traffic unless a rule says otherwise (e.g. host copies
            # standing in for the network in bench/capture, see traces/observed/h100/taxonomy.toml)
            k, sb = "memory", "memcpy" if cat == "gpu_memcpy" else "memset"
        if cat == "gpu_user_annotation":
            k = "annotation"
        klass.append(k)
        sub.append(sb)
    out = events.copy()
    out["klass"] = _categorical(klass, inverse)
    out["subclass"] = _categorical(sub, inverse)
    out["blocking"] = np.array(block, dtype=bool)[inverse] if len(events) else np.zeros(0, dtype=bool)
    out["launch"] = np.array(launch, dtype=bool)[inverse] if len(events) else np.zeros(0, dtype=bool)
    return out


def _categorical(values: list[str], inverse: np.ndarray) -> pd.Categorical:
    distinct = list(dict.fromkeys(values))
    pos = {v: i for i, v in enumerate(distinct)}
    codes = np.array([pos[v] for v in values], dtype=np.int32)
    return pd.Categorical.from_codes(codes[inverse] if len(inverse) else codes[:0], categories=distinct)
