"""Requests a deployment serves: arrival time, input length, output length and the prefix of the
input already in a KV cache. Generated (Poisson or all at once) or read from a CSV / JSONL file.
Columns are numpy arrays: 100,000 requests are a few MB."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..base.errors import UserError

COLUMNS = ("arrival_s", "input_len", "output_len", "prefix_hit_len")
MAX_REQUESTS = 10_000_000
MAX_LEN = 10_000_000            # tokens of one request's input or output


@dataclass(frozen=True)
class Workload:
    arrival_s: np.ndarray        # float64, sorted ascending
    input_len: np.ndarray        # int64, prompt tokens
    output_len: np.ndarray       # int64, generated tokens (the first comes from prefill)
    prefix_hit_len: np.ndarray   # int64, prompt tokens found in the KV cache (0 .. input_len - 1)
    source: str                  # how it was made, for the report

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def hit_rate(self) -> float:
        """Cached share of all prompt tokens (DeepSeek's 'cache hit rate')."""
        return float(self.prefix_hit_len.sum() / max(1, self.input_len.sum()))


def _check(arrival: np.ndarray, inp: np.ndarray, out: np.ndarray, hit: np.ndarray, what: str) -> None:
    if len(arrival) == 0:
        raise UserError(f"{what}: the workload is empty (no requests)")
    if len(arrival) > MAX_REQUESTS:
        raise UserError(f"{what}: {len(arrival):,} requests, at most {MAX_REQUESTS:,} are simulated")
    for name, col in (("arrival_s", arrival), ("input_len", inp), ("output_len", out), ("prefix_hit_len", hit)):
        if not np.all(np.isfinite(col)):
            raise UserError(f"{what}: {name} holds a value that is not a finite number")
        if np.any(col < 0):
            i = int(np.argmax(col < 0))
            raise UserError(f"{what}: {name} must not be negative (request {i}: {col[i]:g})")
    for name, col in (("input_len", inp), ("output_len", out)):
        if np.any(col < 1):
            i = int(np.argmax(col < 1))
            raise UserError(f"{what}: {name} must be at least 1 token (request {i}: {col[i]:g})")
        if np.any(col > MAX_LEN):
            raise UserError(f"{what}: {name} beyond {MAX_LEN:,} tokens")
    if np.any(hit >= inp):
        i = int(np.argmax(hit >= inp))
        raise UserError(f"{what}: prefix_hit_len must be below input_len (request {i}: {hit[i]:g} of {inp[i]:g}): "
                        "at least the last prompt token is computed")


def _make(arrival, inp, out, hit, source: str) -> Workload:
    arrival, inp, out, hit = (np.asarray(x, dtype=float) for x in (arrival, inp, out, hit))
    _check(arrival, inp, out, hit, source)
    order = np.argsort(arrival, kind="stable")
    return Workload(arrival[order], inp[order].astype(np.int64), out[order].astype(np.int64),
                    hit[order].astype(np.int64), source)


def synthetic(requests: int, rate: float | None, input_len: int, output_len: int, prefix_hit: float = 0.0,
              seed: int = 0) -> Workload:
    """`requests` of fixed lengths; Poisson arrivals at `rate` per second, or all at t = 0 (rate None:
    the deployment's capacity, as benchmarks that saturate a server measure it)."""
    if requests < 1:
        raise UserError(f"--requests must be at least 1, got {requests}")
    if rate is not None and not (math.isfinite(rate) and rate > 0):
        raise UserError(f"--rate is requests per second and must be positive (or 'max'), got {rate:g}")
    if not 0.0 <= prefix_hit < 1.0:
        raise UserError(f"--prefix-hit is the cached share of each prompt, in [0, 1), got {prefix_hit}")
    for name, v in (("--input-len", input_len), ("--output-len", output_len)):
        if v < 1:
            raise UserError(f"{name} must be at least 1 token, got {v}")
    rng = np.random.default_rng(seed)
    arrival = np.zeros(requests) if rate is None else np.cumsum(rng.exponential(1.0 / rate, requests))
    hit = min(input_len - 1, int(round(prefix_hit * input_len)))
    desc = (f"{requests:,} requests of {input_len} + {output_len} tokens"
            + (f", {prefix_hit:.1%} prefix hits" if prefix_hit else "")
            + (", all at t = 0 (capacity)" if rate is None else f", Poisson at {rate:g} requests/s"))
    return _make(arrival, np.full(requests, input_len), np.full(requests, output_len), np.full(requests, hit), desc)


def load(path: str) -> Workload:
    """A CSV (header row) or JSONL file with arrival_s, input_len, output_len and optionally
    prefix_hit_len per request."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: no such workload file")
    rows: list[dict] = []
    try:
        with p.open(newline="") as f:
            if p.suffix.lower() in (".jsonl", ".ndjson", ".json"):
                for n, line in enumerate(f, 1):
                    if line.strip():
                        obj = json.loads(line)
                        if not isinstance(obj, dict):
                            raise UserError(f"{path}:{n}: each line must be a JSON object with {', '.join(COLUMNS[:3])}")
                        rows.append(obj)
            else:
                rows = list(csv.DictReader(f))
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: not a CSV or JSONL workload ({e})") from None
    if not rows:
        raise UserError(f"{path}: the workload is empty (no requests)")
    missing = [c for c in COLUMNS[:3] if c not in rows[0]]
    if missing:
        raise UserError(f"{path}: missing column {missing[0]!r} (columns: {', '.join(COLUMNS)}; prefix_hit_len optional)")
    try:
        cols = [[float(r.get(c) or 0) if c == "prefix_hit_len" else float(r[c]) for r in rows] for c in COLUMNS]
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: a request has a missing or non-numeric field ({e})") from None
    return _make(*cols, source=f"{p.name}: {len(rows):,} requests")


__all__ = ["Workload", "synthetic", "load", "COLUMNS"]
