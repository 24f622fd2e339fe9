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

from tracegen.errors import UserError

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
    """Add `klass` (compute/comm/memory/other/cpu) and `subclass` columns, plus CPU flags
    `blocking` and `launch`. tracegen's slices carry their class in args (`akind`)."""
    names = events["name"].cat.categories
    pairs = [tax.classify_name(n) for n in names]
    codes = events["name"].cat.codes.to_numpy()
    klass = np.array([p[0] for p in pairs] + ["other"], dtype=object)[codes]
    sub = np.array([p[1] for p in pairs] + ["unclassified"], dtype=object)[codes]
    cat = events["cat"].astype(str).to_numpy()
    gpu = (events["kind"] == "gpu").to_numpy()
    akind = events["akind"].astype(str).to_numpy()
    given = np.isin(akind, ("compute", "comm"))
    klass = np.where(given, akind, klass)
    sub = np.where(given, events["stage"].astype(str).to_numpy(), sub)
    # copies and fills: memory traffic unless a rule says otherwise (e.g. host copies standing in
    # for the network in bench/capture, classified as comm by traces/observed/h100/taxonomy.toml)
    copy = np.isin(cat, ("gpu_memcpy", "gpu_memset")) & ~np.isin(klass, ("comm", "memory"))
    klass = np.where(copy, "memory", klass)
    sub = np.where(copy, np.where(cat == "gpu_memcpy", "memcpy", "memset"), sub)
    klass = np.where(cat == "gpu_user_annotation", "annotation", klass)
    klass = np.where(gpu, klass, "cpu")
    sub = np.where(gpu, sub, "")
    is_block = np.array([bool(tax.blocking.search(n)) for n in names] + [False])[codes] | (cat == "cpu_wait")
    is_launch = np.array([bool(tax.launch.search(n)) for n in names] + [False])[codes] | (cat == "cpu_launch")
    out = events.assign(klass=pd.Categorical(klass), subclass=pd.Categorical(sub))
    out["blocking"] = is_block & ~gpu
    out["launch"] = is_launch & ~gpu
    return out
