"""Kernel-name taxonomy (data/taxonomy.toml, extendable with --taxonomy FILE): which GPU work is
computation, communication or memory traffic, after which kernels the host waits, and which CPU
spans wait (and why) or launch."""
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
WAIT_SCOPES = ("span", "quiet")


@dataclass(frozen=True)
class Wait:
    """A host span that waits: `scope` span (all of it) or quiet (its stretches without runtime calls)."""
    rx: re.Pattern[str]
    group: str
    scope: str
    why: str


@dataclass(frozen=True)
class Taxonomy:
    rules: tuple[tuple[str, str, re.Pattern[str], str], ...]     # class, subclass, regex, host_wait group
    waits: tuple[Wait, ...]
    launch: re.Pattern[str]
    costed: tuple[tuple[str, bool], ...] = ()    # subclass -> whether tracegen's op graph prices it (rule `costed`)

    def costed_subclasses(self, value: bool) -> frozenset[str]:
        """The compute subclasses the cost model prices as ops (True) or holds no op for (False)."""
        return frozenset(sub for sub, v in self.costed if v is value)

    def classify_name(self, name: str) -> tuple[str, str, str]:
        """(class, subclass, host wait group after its launch or "")."""
        for klass, sub, rx, host_wait in self.rules:
            if rx.search(name):
                return klass, sub, host_wait
        return "other", "unclassified", ""

    def wait_of(self, name: str) -> Wait | None:
        for w in self.waits:
            if w.rx.match(name):
                return w
        return None


def _compile(rx: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(rx, re.I)
    except re.error as exc:
        raise UserError(f"{where}: bad regex {rx!r} ({exc})") from None


def _compile_exact(rx: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(rx)
    except re.error as exc:
        raise UserError(f"{where}: bad regex {rx!r} ({exc})") from None


def _read(text: str, src: str) -> tuple[list, list[Wait], list[str], dict[str, bool]]:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"taxonomy {src}: not valid TOML ({exc})") from None
    unknown = sorted(set(raw) - {"rule", "wait", "blocking", "launch"})
    if unknown:
        raise UserError(f"taxonomy {src}: unknown key {unknown[0]!r} (expected [[rule]], [[wait]], [blocking], "
                        "[launch])")
    if not any(raw.get(k) for k in ("rule", "wait", "blocking", "launch")):
        raise UserError(f"taxonomy {src}: holds no [[rule]], [[wait]], [blocking] or [launch] entry")
    rules, costed = [], {}
    for i, r in enumerate(raw.get("rule", [])):
        where = f"taxonomy {src}: rule {i + 1}"
        if (not isinstance(r, dict) or set(r) - {"class", "subclass", "regex", "host_wait", "costed"}
                or "regex" not in r or "class" not in r):
            raise UserError(f"{where}: needs 'class', 'regex' and optionally 'subclass', 'host_wait', 'costed'")
        if r["class"] not in CLASSES:
            raise UserError(f"{where}: class must be one of {', '.join(CLASSES)}, got {r['class']!r}")
        if "costed" in r and not isinstance(r["costed"], bool):
            raise UserError(f"{where}: costed must be true or false, got {r['costed']!r}")
        rules.append((r["class"], r.get("subclass", r["class"]), _compile(r["regex"], where),
                      str(r.get("host_wait", ""))))
        if "costed" in r:
            costed.setdefault(r.get("subclass", r["class"]), r["costed"])
    waits = []
    for i, w in enumerate(raw.get("wait", [])):
        where = f"taxonomy {src}: wait {i + 1}"
        if not isinstance(w, dict) or set(w) - {"regex", "group", "scope", "why"} or not {"regex", "group"} <= set(w):
            raise UserError(f"{where}: needs 'regex' and 'group', optionally 'scope' (span | quiet) and 'why'")
        scope = w.get("scope", "span")
        if scope not in WAIT_SCOPES:
            raise UserError(f"{where}: scope must be one of {', '.join(WAIT_SCOPES)}, got {scope!r}")
        waits.append(Wait(_compile_exact(w["regex"], where), str(w["group"]), scope, str(w.get("why", ""))))
    # the older [blocking] list: each a synchronising call searched anywhere in the name
    waits += [Wait(_compile(".*(?:" + rx + ")", f"taxonomy {src}: [blocking]"), "sync", "span", "[blocking] entry")
              for rx in raw.get("blocking", {}).get("regex", [])]
    launch = raw.get("launch", {}).get("regex", [])
    return rules, waits, launch, costed


@lru_cache(maxsize=8)
def load_taxonomy(user_file: str | None = None) -> Taxonomy:
    rules, waits, launch, costed = _read((resources.files("replay") / "data" / "taxonomy.toml").read_text("utf-8"),
                                         "built-in")
    if user_file:
        p = Path(user_file)
        try:
            text = p.read_text("utf-8")
        except OSError as exc:
            raise UserError(f"taxonomy {p}: cannot read ({exc.strerror or exc})") from None
        u_rules, u_waits, u_launch, u_costed = _read(text, str(p))
        rules = u_rules + rules
        waits = u_waits + waits
        launch = u_launch + launch
        costed = {**costed, **u_costed}                   # the user's say on a subclass wins
    either = lambda pats, src: _compile("|".join(f"(?:{p})" for p in pats) or "$^", src)  # noqa: E731
    return Taxonomy(tuple(rules), tuple(waits), either(launch, "taxonomy [launch]"), tuple(costed.items()))


def classify(events: pd.DataFrame, tax: Taxonomy) -> pd.DataFrame:
    """Add `klass` (compute/comm/memory/other/annotation/cpu) and `subclass` columns; for GPU rows
    `host_wait` (the host waits after launching it: the group, else ""); for CPU rows `launch`, and
    the span's wait: `blocking` (the whole span waits), `quiet_wait` (its quiet stretches wait) and
    `wait_group`. tracegen's stage slices carry their class (`stage_stream`); its CPU waits
    (cpu_wait) are dispatch waits. Classified once per distinct (name, category, stage stream,
    stage, device), then broadcast."""
    cols = ("name", "cat", "stage_stream", "stage", "device")
    codes = [events[c].cat.codes.to_numpy().astype(np.int64) + 1 for c in cols]     # -1 (NaN) -> 0
    sizes = [len(events[c].cat.categories) + 1 for c in cols]
    key = np.ravel_multi_index(codes, sizes) if len(events) else np.zeros(0, dtype=np.int64)
    uniq, inverse = np.unique(key, return_inverse=True)
    cats = [[None] + list(events[c].cat.categories) for c in cols]
    klass, sub, block, quiet, group, host_wait, launch = [], [], [], [], [], [], []
    for u in uniq:
        name, cat, stage_stream, stage, device = (cats[i][j] for i, j in enumerate(np.unravel_index(u, sizes)))
        name = "" if name is None else str(name)
        if device != "gpu":
            klass.append("cpu")
            sub.append("")
            host_wait.append("")
            w = tax.wait_of(name) if cat != contract.CAT_LAUNCH else None
            if cat == contract.CAT_WAIT:
                w = Wait(re.compile(""), "dispatch", "span", "tracegen's wait for the received counts")
            block.append(w is not None and w.scope == "span")
            quiet.append(w is not None and w.scope == "quiet")
            group.append(w.group if w is not None else "")
            launch.append(bool(tax.launch.search(name)) or cat == contract.CAT_LAUNCH)
            continue
        block.append(False)
        quiet.append(False)
        group.append("")
        launch.append(False)
        hw = ""
        if stage_stream in (contract.COMPUTE, contract.COMM):
            k, sb = stage_stream, str(stage)
        else:
            k, sb, hw = tax.classify_name(name)
        host_wait.append(hw)
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
    flag = lambda v: np.array(v, dtype=bool)[inverse] if len(events) else np.zeros(0, dtype=bool)  # noqa: E731
    out["blocking"] = flag(block)
    out["quiet_wait"] = flag(quiet)
    out["wait_group"] = _categorical(group, inverse)
    out["host_wait"] = _categorical(host_wait, inverse)
    out["launch"] = flag(launch)
    return out


def _categorical(values: list[str], inverse: np.ndarray) -> pd.Categorical:
    distinct = list(dict.fromkeys(values))
    pos = {v: i for i, v in enumerate(distinct)}
    codes = np.array([pos[v] for v in values], dtype=np.int32)
    return pd.Categorical.from_codes(codes[inverse] if len(inverse) else codes[:0], categories=distinct)
