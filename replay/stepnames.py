"""What names a step (one engine iteration) in a trace: torch.profiler's `ProfilerStep#N`, else the
step-like ranges of data/annotations.toml [steps]. Its own light module (no numpy, no pandas): the
command line shows the default in --help without importing the analysis."""
from __future__ import annotations

from functools import lru_cache

DEFAULT_STEP = r"^ProfilerStep#(\d+)$"


@lru_cache(maxsize=1)
def _annotations() -> dict:
    import tomllib
    from importlib import resources

    return tomllib.loads((resources.files("replay") / "data" / "annotations.toml").read_text("utf-8"))


def step_patterns() -> tuple[str, ...]:
    """The step-like annotation patterns tried when a trace has no ProfilerStep ranges (data)."""
    return tuple(f"^(?:{p})$" for p in _annotations()["steps"]["patterns"])


def phase_patterns() -> tuple[str, ...]:
    """The step ranges that say what an iteration ran: prefill / decode requests and tokens (data)."""
    return tuple(_annotations()["phases"]["patterns"])


def backward_ops() -> tuple[str, ...]:
    """The CPU op names of a backward pass (data/annotations.toml [training]), tried in order: a training step."""
    return tuple(_annotations()["training"]["backward_ops"])


def file_patterns() -> dict[str, str]:
    """A folder's file names that are not one rank each (data/annotations.toml [files]): an engine's merge of
    its rank files (`merged`), a rank's file of one forward mode (`stage`)."""
    return {k: v for k, v in _annotations()["files"].items() if isinstance(v, str)}


def stage_phases() -> dict[str, str]:
    """A profiled stage's name (a file name's `stage`) -> the phase of its steps (data/annotations.toml [files])."""
    return dict(_annotations()["files"].get("stage_phase", {}))


__all__ = ["DEFAULT_STEP", "backward_ops", "file_patterns", "phase_patterns", "stage_phases", "step_patterns"]
