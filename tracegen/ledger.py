"""The fit ledger: every constant in the catalogs says where it comes from - a datasheet, a published
figure, a measurement, a fit (each naming its datasets, data/datasets.toml) or an assumption with the
range considered - and a validation row's label follows from the datasets of the constants it uses.

A row on dataset D that uses a constant fitted or measured on D is in-sample; one that uses a figure
published in D, or any constant from a dataset `related` to D, is semi-independent at best; only a
row pinned before it was predicted (bench/data/heldout.toml) may be called held-out."""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache

from .base.errors import UserError
from .catalog import DATA

BASES = ("datasheet", "published", "measured", "fitted", "assumed")
LABELS = ("held-out", "semi-independent", "in-sample", "consistency")   # strictness: 0, 1, 2, 2
_STRICT = {"held-out": 0, "semi-independent": 1, "in-sample": 2, "consistency": 2}
_SOURCE = re.compile(r"^(?P<basis>[a-z]+)(?P<range> \(range [^)]*\))? \[(?P<ids>[^\]]*)\]:?")


@dataclass(frozen=True)
class Entry:
    """One sourced constant (or table of constants) of a catalog."""
    path: str                    # e.g. "h100.comm.intranode", "hopper.efficiency.gemm"
    basis: str                   # one of BASES: what the figure rests on
    datasets: tuple[str, ...]
    text: str


def parse_source(path: str, text: str) -> Entry:
    m = _SOURCE.match(text)
    if m is None or m["basis"] not in BASES:
        raise UserError(f"{path}: source {text[:60]!r} does not start with '<basis> [<datasets>]:' "
                        f"(basis: {', '.join(BASES)})")
    if m["basis"] == "assumed" and not m["range"]:
        raise UserError(f"{path}: an assumed constant gives the range considered: 'assumed (range ...) [...]'")
    ids = tuple(i.strip() for i in m["ids"].split(",") if i.strip())
    unknown = [i for i in ids if i not in datasets()]
    if unknown:
        raise UserError(f"{path}: unknown dataset {unknown[0]!r} (data/datasets.toml)")
    return Entry(path, m["basis"], ids, text)


@lru_cache(maxsize=1)
def datasets() -> dict[str, dict]:
    return tomllib.loads((DATA / "datasets.toml").read_text("utf-8"))


@lru_cache(maxsize=None)
def _toml(name: str) -> dict:
    return tomllib.loads((DATA / name).read_text("utf-8"))


def _walk(prefix: str, node: dict):
    if isinstance(node.get("source"), str):
        yield parse_source(prefix, node["source"])
    for k, v in node.items():
        if isinstance(v, dict):
            yield from _walk(f"{prefix}.{k}", v)


def entries() -> list[Entry]:
    """Every sourced constant of the hardware and model catalogs."""
    out = []
    for name in ("hardware.toml", "models.toml"):
        for key, node in _toml(name).items():
            out += list(_walk(key, node))
    return out


def _chain(hardware: str) -> list[str]:
    hw = _toml("hardware.toml")
    if hardware not in hw:
        raise UserError(f"ledger: unknown hardware entry {hardware!r}")
    out = [hardware]
    while "base" in hw[out[-1]]:
        out.append(hw[out[-1]]["base"])
    return out


def dependencies(hardware: str, comm: str = "", release: str = "", model: str = "deepseek-v3",
                 stack: str = "", phase: str = "prefill", eplb: bool = False) -> list[Entry]:
    """The ledger entries a prediction on this hardware uses (an over-approximation: every efficiency
    curve, the in-situ and power terms, the backend's tables along the inheritance chain, the release,
    the model's config, and the stack's conventions that apply)."""
    chain = _chain(hardware)
    by_path = {e.path: e for e in entries()}
    deps: list[Entry] = []
    seen_eff: set[str] = set()
    for h in chain:
        for e in by_path.values():
            rest = e.path[len(h) + 1:] if e.path.startswith(h + ".") else None
            if e.path == h:
                deps.append(e)
            elif rest is None:
                continue
            elif rest.startswith("efficiency."):
                kind = rest.split(".")[1]
                if kind not in seen_eff:          # the nearest entry of the chain sets the curve
                    seen_eff.add(kind)
                    deps.append(e)
            elif rest in ("in_situ", "power") or (comm and rest == f"comm.{comm}"):
                deps.append(e)
            elif comm and release and rest == f"comm.{comm}.releases.{release}":
                deps.append(e)
    if f"{model}" in by_path:
        deps.append(by_path[model])
    if stack:
        st = _toml("stacks.toml")[stack]
        used = ["releases", "sched_ms"] + (["eplb"] if eplb else [])
        for conv in used:
            ids = tuple(st.get("datasets", {}).get(conv, ()))
            deps.append(Entry(f"stack {stack}.{conv}", "published" if ids else "assumed", ids, st["source"]))
    return deps


def required_label(dataset: str, deps: list[Entry], pinned: bool = False) -> tuple[str, str]:
    """The least strict label a row on `dataset` may carry, and the entry that forces it."""
    if dataset not in datasets():
        raise UserError(f"unknown dataset {dataset!r} (data/datasets.toml)")
    related = set(datasets()[dataset].get("related", ()))
    worst, why = ("held-out" if pinned else "semi-independent"), ("" if pinned else "not pinned before predicting")
    for e in deps:
        if dataset in e.datasets and e.basis in ("fitted", "measured"):
            return "in-sample", f"{e.path} is {e.basis} on {dataset}"
        if (dataset in e.datasets or related & set(e.datasets)) and worst == "held-out":
            worst, why = "semi-independent", f"{e.path} comes from {', '.join(e.datasets)}"
    return worst, why


def label_ok(declared: str, required: str) -> bool:
    """A row may be labelled more strictly than its dependencies force, never less."""
    if declared not in _STRICT:
        raise UserError(f"unknown label {declared!r}; one of {', '.join(LABELS)}")
    return _STRICT[declared] >= _STRICT[required]


__all__ = ["Entry", "BASES", "LABELS", "entries", "datasets", "dependencies", "required_label", "label_ok",
           "parse_source"]
