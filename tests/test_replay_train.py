"""DeepSeek's train.json (H800, EP64, DualPipe forward+backward chunks): stream layout, DeepEP
communication recognised, hidden share, and per-chunk numbers from its annotations. The expected
values are computed here with the standard library only (json + a plain sweep), not with replay."""
from __future__ import annotations

import json
from collections import defaultdict

import pytest

from replay.analyze import analyze
from replay.overlap import layer_metrics


def sweep_union(iv):
    out = []
    for s, e in sorted(iv):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return out


def total(iv):
    return sum(e - s for s, e in iv)


def inter(a, b):
    i = j = 0
    t = 0.0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        t += max(0.0, hi - lo)
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return t


@pytest.fixture(scope="module")
def truth(train_json_path):
    raw = json.load(open(train_json_path))
    ev = raw["traceEvents"]
    kernels = [e for e in ev if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    is_comm = lambda k: "dpsk::ep::" in k["name"] and "get_dispatch_layout" not in k["name"]  # noqa: E731
    comm = [k for k in kernels if is_comm(k)]
    comp = [k for k in kernels if k.get("cat") == "kernel" and not is_comm(k)]
    cu = sweep_union([(k["ts"], k["ts"] + k["dur"]) for k in comp])
    mu = sweep_union([(k["ts"], k["ts"] + k["dur"]) for k in comm])
    # annotations -> launches -> kernels (by correlation), one layer per cycle starting at the first name
    ann = sorted((e for e in ev if e.get("cat") == "user_annotation" and "(" in e["name"]), key=lambda e: e["ts"])
    first = ann[0]["name"]
    layer, n = {}, -1
    for a in ann:
        n += a["name"] == first
        layer[id(a)] = n
    launches = [e for e in ev if e.get("cat") == "cuda_runtime" and "correlation" in e.get("args", {})]
    corr_layer = {}
    for l in launches:
        for a in ann:
            if a["ts"] <= l["ts"] <= a["ts"] + a["dur"]:
                corr_layer[l["args"]["correlation"]] = layer[id(a)]
    per_layer = defaultdict(list)
    for k in comm:
        c = k["args"].get("correlation")
        if c in corr_layer:
            per_layer[corr_layer[c]].append((k["ts"], k["ts"] + k["dur"]))
    layers = {L: (total(sweep_union(iv)), inter(sweep_union(iv), cu)) for L, iv in per_layer.items()}
    streams = defaultdict(lambda: [0.0, 0.0])
    for k in comp:
        streams[k["args"]["stream"]][0] += k["dur"]
    for k in comm:
        streams[k["args"]["stream"]][1] += k["dur"]
    return {"comm": total(mu), "compute": total(cu), "overlap": inter(cu, mu), "layers": layers,
            "streams": dict(streams), "n_comm": len(comm)}


@pytest.fixture(scope="module")
def train_json_path():
    from .conftest import TRAIN_JSON
    if not TRAIN_JSON.exists():
        pytest.skip(f"{TRAIN_JSON} is absent: DeepSeek's train.json lives in ../shared/traces")
    return TRAIN_JSON


@pytest.fixture(scope="module")
def result(train_json_path):
    return analyze(train_json_path, use_cache=False)


def test_stream_layout(result, truth):
    roles = {r["stream"]: r["role"] for r in result.streams.to_dict(orient="records")}
    assert roles[7] == "compute" and roles[27] == "comm"
    comm_streams = [s for s, (c, m) in truth["streams"].items() if m > c]
    assert comm_streams == [27]


def test_deepep_communication_recognised(result, truth):
    comm = result.events[(result.events["device"] == "gpu") & (result.events["klass"] == "comm")]
    assert len(comm) == truth["n_comm"] == 32
    subs = comm["subclass"].astype(str).value_counts().to_dict()
    assert subs == {"deepep_notify": 16, "deepep_dispatch": 8, "deepep_combine": 8}


def test_hidden_share_matches_an_independent_sweep(result, truth):
    (r,) = result.ranks
    assert r["comm_us"] == pytest.approx(truth["comm"], abs=1e-6)
    assert r["compute_us"] == pytest.approx(truth["compute"], abs=1e-6)
    assert r["overlap_us"] == pytest.approx(truth["overlap"], abs=1e-6)
    assert r["hidden_comm_pct"] == pytest.approx(100 * truth["overlap"] / truth["comm"], abs=1e-9)
    assert 95.0 < r["hidden_comm_pct"] < 97.0          # 96.3 %: DualPipe hides almost all of it


def test_per_chunk_numbers_from_annotations(result, truth):
    assert result.structure == "annotations"
    layers = result.layers.set_index("layer")
    assert sorted(layers.index) == sorted(truth["layers"]) == [0, 1, 2, 3]
    for L, (comm, ov) in truth["layers"].items():
        assert layers.loc[L, "comm_us"] == pytest.approx(comm, abs=1e-6)
        assert layers.loc[L, "overlap_us"] == pytest.approx(ov, abs=1e-6)
    stages = set(",".join(result.layers["stages"]).split(","))
    assert {"attn(F)", "dispatch(F)", "mlp(B)", "combine(B)", "dispatch(B)", "mlp(W)", "attn(W)"} <= stages
    mbs = layer_metrics(result.events, by_microbatch=True)
    assert set(mbs["microbatch"]) == {0, 1}      # forward chunk, backward chunk
