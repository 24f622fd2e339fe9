"""What names a step (one engine iteration) in a trace: torch.profiler's `ProfilerStep#N`, else the
step-like ranges of data/annotations.toml [steps]. Its own light module (no numpy, no pandas): the
command line shows the default in --help without importing the analysis."""
from __future__ import annotations

from functools import lru_cache

DEFAULT_STEP = r"^ProfilerStep#(\d+)$"


@lru_cache(maxsize=1)
def step_patterns() -> tuple[str, ...]:
    """The step-like annotation patterns tried when a trace has no ProfilerStep ranges (data)."""
    import tomllib
    from importlib import resources

    raw = tomllib.loads((resources.files("replay") / "data" / "annotations.toml").read_text("utf-8"))
    return tuple(f"^(?:{p})$" for p in raw["steps"]["patterns"])


__all__ = ["DEFAULT_STEP", "step_patterns"]
