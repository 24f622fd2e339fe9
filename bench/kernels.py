"""Kernel efficiency curves for H800 and H20 from published measurements: DeepGEMM dense and grouped
FP8 GEMMs and FlashMLA / FA3 MLA attention (InferSim's bench_data, `../shared/reference/infersim_bench`).

    python -m bench.kernels            # fit both GPUs, print the curves (hardware.toml form) and errors
    python -m bench.kernels --write    # ... and put them into tracegen/data/hardware.toml

Each CSV row becomes one observation (tracegen.fit.Obs) with the shapes, FLOPs and HBM bytes the
cost model would charge for it, and tracegen.fit.fit fits the curves and the kernel floor exactly
as `replay calibrate` does for a profiler trace, plus each kind's own HBM efficiency (a GEMM at
small M streams its weights, FlashMLA reads the cache, well below a copy's rate). The hardware's
HBM efficiency for everything else stays the one measured by device copies on the lent H100
(same HBM3 stacks as the H800). `--write` puts the results into
tracegen/data/hardware.toml ([h100-deepgemm.efficiency], which h800 inherits, and [h20.efficiency]);
tests/test_kernels_fit.py re-fits and compares."""
from __future__ import annotations

import csv
import gzip
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from tracegen.catalog import EffCurve, Hardware, load_hardware
from tracegen.fit import FITTED, Obs, errors, fit

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / "shared" / "reference" / "infersim_bench"
GPUS = {"h800": "h800", "h20": "h20"}          # folder -> hardware entry
SECTION = {"h800": "h100-deepgemm", "h20": "h20"}     # the hardware.toml entry whose curves are fitted here
LABEL = {"gemm": "DeepGEMM dense FP8", "grouped_gemm": "DeepGEMM grouped FP8, contiguous layout",
         "grouped_gemm_masked": "DeepGEMM grouped FP8, masked layout", "attention": "FA3 MLA prefill, causal",
         "attention_decode": "FlashMLA decode"}
CATALOG = ROOT / "tracegen" / "data" / "hardware.toml"
KINDS = ("gemm", "grouped_gemm", "grouped_gemm_masked", "attention", "attention_decode")
# MLA as FlashMLA / FA3 run it: 128 heads, latent 512 + rope 64 (decode, absorbed), qk 192 / v 128 (prefill)
HEADS, LATENT, ROPE, NOPE, V = 128, 512, 64, 128, 128
MIN_TOKENS_PER_EXPERT = 8      # masked grouped GEMMs skip empty experts: below this the weights read is unknown


def _rows(path: Path) -> list[dict[str, float]]:
    with path.open() as f:
        return [{k: (float(v) if k not in ("dtype", "kv_dtype") else v) for k, v in r.items()} for r in csv.DictReader(f)]


def observations(gpu: str, root: Path = BENCH) -> list[Obs]:
    """Every usable measurement of one GPU as the cost model's observation."""
    out: list[Obs] = []
    for r in _rows(root / "gemm" / gpu / "data.csv"):
        m, k, n = r["m"], r["k"], r["n"]
        out.append(Obs("gemm", f"gemm_{int(k)}x{int(n)}", m, 2 * m * n * k, k * n + m * k + 2 * m * n, "fp8",
                       r["latency_us"], gemms=((m, n, k, 1.0),)))
    for phase in ("prefill", "decode"):
        for r in _rows(root / "grouped_gemm" / phase / gpu / "data.csv"):
            e, tpe, hidden, width = r["num_local_experts"], r["tokens_per_expert"], r["hidden_size"], r["intermediate_size"]
            if tpe < MIN_TOKENS_PER_EXPERT:
                continue
            rows = e * tpe
            for part, n, k, us in (("up", 2 * width, hidden, r["up_proj_us"]), ("down", hidden, width, r["down_proj_us"])):
                # contiguous layout (prefill): efficiency by rows per expert; masked (decode): by all
                # its rows (tracegen/ops.py _ffn_halves says why)
                kind, shape = (("grouped_gemm", (tpe, n, k, e)) if phase == "prefill"
                               else ("grouped_gemm_masked", (rows, n, k, 1.0)))
                out.append(Obs(kind, f"grouped_{part}_{phase}", shape[0], 2 * rows * n * k,
                               e * n * k + rows * k + 2 * rows * n, "fp8", us, gemms=(shape,), phase=phase))
    for f in sorted((root / "mla" / "decode" / gpu).glob("*.csv")):
        for r in _rows(f):
            b, kv = r["batch_size"], r["kv_len"]
            kv_elem = 1 if r["kv_dtype"] == "fp8" else 2
            out.append(Obs("attention_decode", "flashmla", b, 2 * HEADS * b * kv * (LATENT + ROPE + LATENT),
                           b * kv * (LATENT + ROPE) * kv_elem + b * HEADS * (LATENT + ROPE) * 2, "bf16",
                           r["latency_us"], phase="decode"))
    for f in sorted((root / "mla" / "prefill" / gpu).glob("*.csv")):
        for r in _rows(f):
            s = r["seq_len"]
            pairs = s * (s + 1) / 2                     # causal
            out.append(Obs("attention", "fa3_mla_prefill", s, 2 * HEADS * pairs * (NOPE + ROPE + V),
                           s * HEADS * (NOPE + ROPE + V) * 2 * 2, "bf16", r["latency_us"]))
    return out


def fitted(gpu: str, root: Path = BENCH) -> tuple[Hardware, list[Obs]]:
    """The hardware entry with curves fitted to the GPU's measurements (floors and HBM included)."""
    base = load_hardware(GPUS[gpu])
    # every fitted kind starts from the published-figure curves (not the catalog's own fitted ones),
    # so the fit is the same whatever the catalog holds now; the masked layout gets a curve of its
    # own (else its measurements would refit the contiguous one)
    start = load_hardware("h100-datasheet")
    base = replace(base, efficiency={**base.efficiency, **{k: start.curve(k) for k in FITTED}})
    obs = observations(gpu, root)
    # grouped GEMMs come in two shapes (up, down): enough to fit how the depth K matters
    # the masked (decode) layout sits at the knee - computing and streaming the experts' weights take
    # similar time - where a hard roofline misses by 14-25 %: it may blend the two (EffCurve.blend)
    return fit(obs, base, keep_hbm=True, min_shapes=2, kinds=FITTED, kind_hbm=True,
               blend_kinds=("grouped_gemm_masked",)), obs


def curve_line(kind: str, c: EffCurve, source: str) -> str:
    """One hardware.toml efficiency line, every field written (an omitted one would be inherited
    from the entry's base)."""
    parts = [f"max = {c.max:.6g}"] + [f"{name} = {getattr(c, name):.6g}"
                                      for name in ("m_half", "m_pow", "n_half", "k_half", "floor_us", "hbm", "blend")]
    return f'{kind} = {{ {", ".join(parts)}, source = "{source}" }}'


def write(gpu: str, hw: Hardware, obs: list[Obs], path: Path = CATALOG) -> None:
    """Replace the fitted curves in the hardware catalog's [<entry>.efficiency] table."""
    text = path.read_text()
    head = f"[{SECTION[gpu]}.efficiency]\n"
    start = text.index(head) + len(head)
    end = text.find("\n[", start)
    end = len(text) if end < 0 else end + 1
    kinds = sorted({o.kind for o in obs}, key=KINDS.index)
    lines = [curve_line(k, hw.efficiency[k], f"fitted [infersim-bench-{gpu}]: InferSim bench_data {gpu.upper()} ({LABEL[k]})") for k in kinds]
    path.write_text(text[:start] + "\n".join(lines) + "\n\n" + text[end:].lstrip("\n"))


CAPTURE = ROOT / "traces" / "observed" / "deepep-h100x4" / "decode-proper"
SMALL_US = 10.0      # elementwise kernels shorter than this are at their floor (launch + one wave)


def elementwise_floor_us(folder: Path = CAPTURE) -> float:
    """The shortest elementwise kernels' time on the lent H100: the median of PyTorch's elementwise
    kernels under SMALL_US in the 4-rank decode capture (every rank)."""
    durs = [e["dur"] for f in sorted(folder.glob("rank*.json.gz"))
            for e in json.loads(gzip.decompress(f.read_bytes()))["traceEvents"]
            if e.get("ph") == "X" and e.get("cat") == "kernel" and e["dur"] < SMALL_US
            and e["name"].startswith("void at::native::elementwise_kernel")]
    return float(np.median(durs))


def table(gpu: str, root: Path = BENCH) -> pd.DataFrame:
    """Median and 90th-percentile absolute error per kind of the catalog's curves on the measurements."""
    hw = load_hardware(GPUS[gpu])
    df = errors(observations(gpu, root), hw)
    g = df.assign(abs_err=df["err_pct"].abs()).groupby("kind")["abs_err"]
    return pd.DataFrame({"n": g.size(), "median_abs_err_pct": g.median(), "p90_abs_err_pct": g.quantile(0.9)})


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not BENCH.exists():
        print(f"no {BENCH}: the InferSim bench data sits in ../shared/reference", file=sys.stderr)
        return 2
    print(f"elementwise kernel floor on the lent H100: {elementwise_floor_us():.2f} us "
          f"(catalog h100: {load_hardware('h100').efficiency['elementwise'].floor_us:g} us)\n")
    for gpu in GPUS:
        hw, obs = fitted(gpu)
        print(f"[{gpu}.efficiency]   # {len(obs)} measurements")
        for kind in KINDS:
            if kind not in hw.efficiency:
                continue
            print(curve_line(kind, hw.efficiency[kind], f"fitted [infersim-bench-{gpu}]: InferSim bench_data {gpu.upper()}"))
        print(curve_line("hbm", hw.efficiency["hbm"], f"fitted [infersim-bench-{gpu}]: InferSim bench_data {gpu.upper()}"))
        err = errors(obs, hw)
        print(err.assign(a=err["err_pct"].abs()).groupby("kind")["a"].describe()[["count", "50%", "75%", "max"]]
              .round(1).to_string())
        if "--write" in argv:
            write(gpu, hw, obs)
            print(f"wrote [{SECTION[gpu]}.efficiency] in {CATALOG.relative_to(ROOT)}")
        print("catalog now:")
        print(table(gpu).round(1).to_string())
        print()
    return 0


__all__ = ["observations", "fitted", "table", "curve_line", "write", "elementwise_floor_us"]

if __name__ == "__main__":
    sys.exit(main())
