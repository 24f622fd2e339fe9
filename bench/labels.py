"""Validation rows' labels (held-out / semi-independent / in-sample / consistency), each checked
against the fit ledger (tracegen/ledger.py): a row names its dataset, the label it claims and what
its prediction runs on; `check` says which label those dependencies force. `make validate` prints
the label beside each error, and tests/test_ledger.py fails when a row claims less than it must."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tracegen.ledger import Entry, dependencies, label_ok, required_label

HELDOUT = Path(__file__).resolve().parent / "data" / "heldout.toml"


@lru_cache(maxsize=1)
def pinned() -> dict[str, dict]:
    """The held-out rows, pinned before they were predicted (bench/data/heldout.toml)."""
    return tomllib.loads(HELDOUT.read_text("utf-8"))


@dataclass(frozen=True)
class Claim:
    """What a row stands on: its dataset, the label it claims and the prediction's inputs."""
    dataset: str
    label: str
    hardware: str
    comm: str = ""
    release: str = ""
    model: str = "deepseek-v3"
    stack: str = ""
    phase: str = "prefill"
    eplb: bool = False
    heldout_key: str = ""            # its entry in heldout.toml, for a held-out row
    datum: str = ""                  # the published figure it checks; a datum counted once in summaries

    def deps(self) -> list[Entry]:
        return dependencies(self.hardware, self.comm, self.release, self.model, self.stack, self.phase, self.eplb)

    def check(self) -> tuple[bool, str, str]:
        """(ok, the least strict label allowed, why)."""
        pin = bool(self.heldout_key) and self.heldout_key in pinned()
        need, why = required_label(self.dataset, self.deps(), pinned=pin)
        return label_ok(self.label, need), need, why


def claim(dataset: str, label: str, hardware: str, plan=None, **kw) -> Claim:
    """A claim from a resolved plan (its backend and release)."""
    if plan is not None:
        from tracegen.catalog import load_hardware
        kw.setdefault("comm", plan.comm)
        kw.setdefault("release", plan.comm_release or load_hardware(hardware).backend(plan.comm).release)
        kw.setdefault("phase", plan.phase)
    return Claim(dataset, label, hardware, **kw)


__all__ = ["Claim", "claim", "pinned", "HELDOUT"]
