"""Physical quantities in catalog files: a bare number is in the field's canonical unit, a string
carries its own unit ("3.35 TB/s", "400 Gb/s", "80 GB"). A unit of the wrong kind is an error."""
from __future__ import annotations

import math
import re

from .errors import UserError

# kind -> (canonical unit, {unit spelling (lower case): factor to canonical})
_KINDS: dict[str, tuple[str, dict[str, float]]] = {
    "flops": ("TFLOPS", {"tflops": 1.0, "pflops": 1e3, "gflops": 1e-3, "tops": 1.0, "pops": 1e3,
                         "tflop/s": 1.0, "pflop/s": 1e3}),
    "bandwidth": ("GB/s", {"gb/s": 1.0, "tb/s": 1e3, "mb/s": 1e-3, "gbit/s": 0.125, "tbit/s": 125.0}),
    "size": ("GB", {"gb": 1.0, "tb": 1e3, "mb": 1e-3, "gib": 1.073741824, "mib": 1.073741824e-3}),
    "time": ("us", {"us": 1.0, "ms": 1e3, "s": 1e6, "ns": 1e-3}),
    "count": ("", {"": 1.0}),
    "fraction": ("", {"": 1.0, "%": 0.01}),
}
# Case matters for bits vs bytes: "Gb/s" is gigabits, "GB/s" gigabytes.
_BITS = {"Gb/s": 0.125, "Tb/s": 125.0, "Mb/s": 0.125e-3, "Gbps": 0.125, "Tbps": 125.0}
_NUM_UNIT = re.compile(r"^\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*([A-Za-z%/()_]*)\s*$")


def parse_quantity(value: object, kind: str, where: str) -> float:
    """Return `value` in the canonical unit of `kind`; `where` names the field in errors."""
    canonical, units = _KINDS[kind]
    if isinstance(value, bool):
        raise UserError(f"{where}: expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return _finite(float(value), value, where)
    if not isinstance(value, str):
        raise UserError(f"{where}: expected a number{' in ' + canonical if canonical else ''}, got {value!r}")
    m = _NUM_UNIT.match(value)
    if not m:
        raise UserError(f"{where}: cannot read {value!r} as a number with a unit")
    number, unit = float(m.group(1)), m.group(2)
    if unit in _BITS and kind == "bandwidth":
        return _finite(number * _BITS[unit], value, where)
    factor = units.get(unit.lower())
    if factor is None:
        expected = ", ".join(sorted({u for u in units if u})) or "no unit"
        raise UserError(f"{where}: unit {unit!r} is not a {kind} unit (expected {expected}; "
                        f"a bare number means {canonical or 'a plain count'})")
    return _finite(number * factor, value, where)


def _finite(x: float, value: object, where: str) -> float:
    if not math.isfinite(x):
        raise UserError(f"{where}: expected a finite number, got {value!r}")
    return x
