"""The board's power limit: how far a step's mean draw pushes the SM clock below boost.

Measured on the lent H100 (traces/observed/h100/power.json, duty.json; bench/power.py fits the
figures): compute-bound kernels (large GEMMs, prefill attention) back to back draw more than the
700 W limit at the boost clock, so the card lowers its clock and they run 12-15 % longer;
memory-bound kernels and idle time draw far less and keep the boost clock; a mix throttles only
once its mean draw exceeds the limit. The efficiency curves are boost-clock curves (kernels timed
one at a time), so a step whose compute-bound share is high gets its compute terms stretched here.

A step's draw: compute-bound time x `compute_w` + other compute-stream time x `memory_w` + the
rest of the span (the stream waiting) x `idle_w`, over the span, all at boost."""
from __future__ import annotations

from dataclasses import dataclass

from .catalog import Power


@dataclass(frozen=True)
class Draw:
    """A step's power at the boost clock and the throttle it sets."""
    hot_us: float          # compute-stream time in compute-bound kernels
    busy_us: float         # all compute-stream time
    span_us: float
    demand_w: float        # mean draw at boost
    throttle: float        # 0: boost clock; 1: each compute-bound kind at its full measured slowdown

    def to_dict(self) -> dict[str, float]:
        return {"demand_w": round(self.demand_w, 1), "throttle": round(self.throttle, 4),
                "compute_bound_share": round(self.hot_us / self.span_us, 4) if self.span_us else 0.0}


def draw(hot_us: float, busy_us: float, span_us: float, p: Power) -> Draw:
    """The mean draw of a span with `hot_us` of compute-bound and `busy_us` of all compute work,
    and the throttle it sets: the excess over the limit as a share of the most there can be (all
    compute-bound), full at `saturate` of it."""
    if span_us <= 0:
        return Draw(hot_us, busy_us, span_us, p.idle_w, 0.0)
    busy = min(busy_us, span_us)
    hot = min(hot_us, busy)
    demand = (hot * p.compute_w + (busy - hot) * p.memory_w + (span_us - busy) * p.idle_w) / span_us
    excess = max(0.0, demand - p.limit_w) / (p.compute_w - p.limit_w)
    return Draw(hot_us, busy_us, span_us, demand, min(1.0, excess / p.saturate))


def compute_bound(terms: dict[str, float], kind: str, p: Power) -> bool:
    """Whether an op's time is its compute term and its kind is one that draws `compute_w`."""
    c = terms.get("compute_ms", 0.0)
    return kind in p.slowdown and c > 0 and c >= max(terms.values())
