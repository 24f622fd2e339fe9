"""`tracegen deploy`: the request-level simulation against the per-step model it is built on (exact
round trips where the simulated load sits on a grid point), its invariants, PD against colocated
under load, SLO handling, the trace, and bad input."""
from __future__ import annotations


import json
import math
from dataclasses import replace

import numpy as np
import pytest

from tests.helpers import read_trace
from tracegen.cli import main
from tracegen.pipeline import TraceOptions, schedule
from tracegen.plan import validate
from tracegen.resolve import resolve_target
from tracegen.serving.deployment import Deployment, PoolPlan, build_pools, simulate_deployment
from tracegen.serving.metrics import summary, tpot_s
from tracegen.serving.simulate import DECODE
from tracegen.serving.workload import Workload, load, synthetic
from tracegen.base.errors import UserError
from tracegen.target import Target

TARGET = resolve_target("deepseek-v3", hardware="h800")
CACHE: dict = {}


def sim(d: Deployment, w: Workload):
    return simulate_deployment(*TARGET, d, w, CACHE)


def span_ms(plan, launch_us: float | None = None) -> float:
    m, hw, p = TARGET
    opts = TraceOptions(tbo="proper", launch_us=launch_us)
    return schedule(Target(m, hw, p, validate(plan, m, hw)), opts).span_us / 1e3


# ----------------------------------------------------------------------------- round trips
def test_prefill_capacity_is_the_scheduled_step_exactly():
    """512 prompts of 2,048 tokens on EP32 with a 16,384-token budget: two full steps, each exactly the
    scheduled step of 8 prompts per DP group (a grid point of the table)."""
    w = synthetic(512, None, 2048, 1)
    r = sim(Deployment("prefill", prefill=PoolPlan(4, 1, 32)), w)
    pools, _ = build_pools(*TARGET, Deployment("prefill", prefill=PoolPlan(4, 1, 32)), w, CACHE)
    step = span_ms(replace(pools[0].prefill.plan, batch=8, seq_len=2048, kv_hit=0.0))
    assert len(r.steps["start"]) == 2
    assert np.nanmax(r.finish) * 1e3 == pytest.approx(2 * step, rel=1e-9)
    s = summary(r)
    assert s["pools"][0]["input_tokens_per_s_per_node"] == pytest.approx(512 * 2048 / (2 * step / 1e3) / 4, rel=1e-9)


def test_decode_steps_and_tpot_follow_the_table():
    """144 x 32 requests at t = 0 on one EP144 instance, 11 output tokens: 10 decode steps of 32
    requests per DP group, each a scheduled step between the first and the last context."""
    n = 144 * 32
    w = synthetic(n, None, 2000, 11)
    d = Deployment("decode", decode=PoolPlan(18, 1, 144), max_batch=32)
    r = sim(d, w)
    assert len(r.steps["start"]) == 10 and np.all(r.steps["requests"] == n)
    plan = build_pools(*TARGET, d, w, CACHE)[0][0].decode.plan
    # decode steps replay a graph: no CPU launch cost
    lo, hi = (span_ms(replace(plan, batch=32, seq_len=c), launch_us=0.0) for c in (2001, 2011))
    t = tpot_s(r) * 1e3
    assert np.all(t >= lo * (1 - 1e-6)) and np.all(t <= hi * (1 + 1e-3))


def test_eager_decode_pays_the_launches_at_small_batch(tmp_path):
    """One request per GPU on a host that needs 40 us per launch: eager decode is launch-bound, a graph is not."""
    slow = tmp_path / "slow-cpu.toml"
    slow.write_text('[h800-slow-cpu]\nbase = "h800"\ncpu_launch_us = 40.0\n')
    target = resolve_target("deepseek-v3", hardware="h800-slow-cpu", hardware_file=str(slow))
    w = synthetic(16, None, 4096, 5)
    tpot = [summary(simulate_deployment(*target, Deployment("decode", decode=PoolPlan(2, 1, 16), decode_graphs=g), w))
            ["pools"][0]["step_tpot_ms"] for g in (True, False)]
    assert tpot[1] > 1.3 * tpot[0]


def test_mtp_credits_accepted_tokens_per_step():
    """MTP 1 at acceptance 0.8: 1.8 tokens per request per step, so 100 output tokens (99 after the
    first) need ceil(99 / 1.8) = 55 steps."""
    w = synthetic(144, None, 1000, 100)
    r = sim(Deployment("decode", decode=PoolPlan(18, 1, 144), plan_fields={"mtp": 1, "mtp_accept": 0.8}), w)
    assert len(r.steps["start"]) == math.ceil(99 / 1.8)
    assert r.pools[0].tokens_per_step == pytest.approx(1.8)
    assert r.steps["tokens"].sum() == pytest.approx(144 * 99)        # no token credited past a request's end
    assert summary(r)["pools"][0]["output_tokens"] == pytest.approx(144 * 99)


# ----------------------------------------------------------------------------- invariants
@pytest.fixture(scope="module")
def loaded():
    w = synthetic(3000, 60.0, 2000, 300, prefix_hit=0.25, seed=3)
    return sim(Deployment("pd", prefill=PoolPlan(2, 1, 16), decode=PoolPlan(4, 1, 32), max_batch=64), w)


def test_every_request_goes_through_its_stages_in_order(loaded):
    r, w = loaded, loaded.workload
    assert not np.isnan(r.finish).any()
    assert np.all(r.prefill_start >= w.arrival_s)
    assert np.all(r.prefill_end > r.prefill_start)
    assert np.all(r.first_token >= r.prefill_end)            # plus the KV transfer
    assert np.all(r.decode_start >= r.first_token)
    assert np.all(r.finish > r.decode_start)


def test_steps_never_overlap_and_limits_hold(loaded):
    s, r = loaded.steps, loaded
    for i in np.unique(s["instance"]):
        mine = s["instance"] == i
        start, end = s["start"][mine], s["end"][mine]
        assert np.all(end > start) and np.all(start[1:] >= end[:-1] - 1e-12)
    for k, pool in enumerate(r.pools):
        mine = r.instance_pool[s["instance"]] == k
        if pool.role == "decode":
            assert s["requests"][mine].max() <= pool.max_batch * pool.dp
            assert s["kv"][mine].max() <= pool.kv_tokens * pool.dp
        else:
            assert s["load"][mine].max() <= pool.token_budget * pool.dp + 1e-6
    for p in summary(r)["pools"]:
        assert 0 < p["utilisation"] <= 1 + 1e-12


def test_tokens_are_conserved(loaded):
    r, w = loaded, loaded.workload
    s = r.steps
    pre = r.instance_pool[s["instance"]] == 0
    assert s["load"][pre].sum() == pytest.approx(float((w.input_len - w.prefix_hit_len).sum()))
    dec = ~pre & (s["kind"] == DECODE)
    assert s["requests"][dec].sum() == pytest.approx(float((w.output_len - 1).sum()))   # 1 token per step
    assert s["tokens"][dec].sum() == pytest.approx(float((w.output_len - 1).sum()))


def test_poisson_arrivals_have_the_asked_rate():
    w = synthetic(20000, 50.0, 100, 10, seed=1)
    assert len(w) / w.arrival_s[-1] == pytest.approx(50.0, rel=0.03)


# ----------------------------------------------------------------------------- PD vs colocated
def test_colocated_loses_to_pd_under_load():
    """Same 6 nodes, same Poisson load: colocated prompts interrupt every decoding request (SGLang's
    prefill-first scheduling), so its TPOT tail is far worse; PD pays a KV transfer in TTFT only."""
    w = synthetic(1500, 25.0, 2000, 200, seed=2)
    pd = summary(sim(Deployment("pd", prefill=PoolPlan(2, 1, 16), decode=PoolPlan(4, 1, 32)), w))
    co = summary(sim(Deployment("colocated", prefill=PoolPlan(6, 1, 48)), w))
    assert co["tpot_ms"]["p90"] > 1.5 * pd["tpot_ms"]["p90"]
    assert co["e2e_ms"]["p50"] > pd["e2e_ms"]["p50"]


# ----------------------------------------------------------------------------- SLOs
def test_tpot_target_caps_the_decode_batch():
    w = synthetic(144 * 200, None, 2000, 50)
    free = summary(sim(Deployment("decode", decode=PoolPlan(18, 1, 144)), w))
    capped = sim(Deployment("decode", decode=PoolPlan(18, 1, 144), slo_tpot_ms=40.0), w)
    s = summary(capped, slo_tpot_ms=40.0)
    assert free["tpot_ms"]["p50"] > 40.0
    pool = capped.pools[0]
    assert 1 <= pool.max_batch < 200 and capped.steps["requests"].max() <= pool.max_batch * pool.dp
    steps = capped.steps["end"] - capped.steps["start"]
    assert steps.max() * 1e3 <= 40.0          # every step keeps the target ...
    assert s["decode_wait_ms"]["p90"] > 0 and s["slo"]["attained"] < 1.0   # ... the queue for a slot does not


def test_search_finds_a_plan_that_meets_the_slo(capsys):
    code = main(["deploy", "--search", "--nodes", "6", "--slo-ttft", "3000", "--slo-tpot", "60", "--requests", "600",
                 "--input-len", "2000", "--output-len", "200", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["best"] is not None
    best = out["best"]
    assert best["metrics"]["slo"]["attained"] >= 0.9
    assert best["prefill_nodes"] + best["decode_nodes"] == 6
    assert best["goodput_rps"] == max(c["goodput_rps"] for c in out["candidates"])


def test_an_slo_no_plan_meets_is_one_line_and_exit_2(capsys):
    code = main(["deploy", "--search", "--nodes", "6", "--slo-ttft", "1", "--slo-tpot", "60", "--requests", "300",
                 "--input-len", "2000", "--output-len", "50"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) >= 1
    assert "no plan of 6 nodes meets" in err[-1] and "best:" in err[-1] and "attained" in err[-1]
    code = main(["deploy", "--search", "--nodes", "3", "--slo-ttft", "1000", "--slo-tpot", "60"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "no split of 3 nodes can run" in err[-1] and "KV tokens" in err[-1]


# ----------------------------------------------------------------------------- outputs
def test_trace_has_pools_steps_counters_and_requests(tmp_path, capsys):
    out = tmp_path / "d.json.gz"
    code = main(["deploy", "--prefill-nodes", "2", "--decode-nodes", "4", "--rate", "20", "--requests", "300",
                 "--output-len", "50", "-o", str(out), "--trace-requests", "100", "--json"])
    s = json.loads(capsys.readouterr().out)
    assert code == 0
    t = read_trace(out)
    ev = t["traceEvents"]
    names = {e["args"]["name"] for e in ev if e.get("name") == "process_name"}
    assert names == {"prefill pool", "decode pool", "requests"}
    steps = [e for e in ev if e.get("ph") == "X"]
    assert len(steps) == sum(p["steps"] for p in s["pools"])
    assert {e["name"] for e in steps} == {"prefill step", "decode step"}
    assert {e["name"] for e in ev if e.get("ph") == "C"} == {"batch (requests)", "KV tokens held", "queue (requests)"}
    b = [e for e in ev if e.get("ph") == "b"]
    e = [x for x in ev if x.get("ph") == "e"]
    assert len(b) == len(e) and len({x["id"] for x in b}) == 100
    assert {x["name"] for x in b} >= {"prefill", "KV transfer", "decode"}
    assert t["otherData"]["format"] == "moe-timeline-deploy/1"


def test_replay_says_a_deployment_trace_is_not_a_layer_timeline(tmp_path, capsys):
    from replay.cli import main as replay_main
    out = tmp_path / "d.json"
    assert main(["deploy", "--mode", "decode", "--decode-nodes", "4", "--requests", "50", "--output-len", "5",
                 "-o", str(out)]) == 0
    capsys.readouterr()
    assert replay_main(["analyze", str(out)]) == 2
    err = capsys.readouterr().err
    assert "tracegen deploy" in err and len(err.strip().splitlines()) == 1


def test_requests_out_as_parquet_and_csv(tmp_path, capsys):
    import pandas as pd
    for name in ("r.parquet", "r.csv"):
        path = tmp_path / name
        assert main(["deploy", "--mode", "prefill", "--requests", "64", "--requests-out", str(path)]) == 0
        df = pd.read_parquet(path) if name.endswith("parquet") else pd.read_csv(path)
        assert len(df) == 64 and (df.ttft_ms > 0).all()
    capsys.readouterr()


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("argv,needle", [
    (["--rate", "0"], "--rate"),
    (["--rate", "fast"], "--rate"),
    (["--input-len", "-5"], "--input-len"),
    (["--requests", "0"], "--requests"),
    (["--prefill-nodes", "3", "--prefill-ep", "16"], "do not split"),
    (["--hardware", "nosuchgpu"], "nosuchgpu"),
    (["--slo-tpot", "-1"], "--slo-tpot"),
    (["--mode", "decode", "--slo-tpot", "1"], "no decode batch meets TPOT"),
    (["--search"], "--nodes"),
    (["-o", "x.pftrace"], "x.pftrace"),
    (["--trace-requests", "-1"], "--trace-requests"),
    (["--seed", "-1"], "--seed"),            # numpy's generators take no negative seed (found by fuzzing the flags)
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, needle):
    code = main(["deploy", "--requests", "20", *argv] if "--requests" not in argv else ["deploy", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err


@pytest.mark.parametrize("text,needle", [
    ("", "empty"),
    ("arrival_s,input_len\n0,10\n", "missing column 'output_len'"),
    ("arrival_s,input_len,output_len\n0,-3,10\n", "must not be negative"),
    ("arrival_s,input_len,output_len\n0,x,10\n", "non-numeric"),
    ("arrival_s,input_len,output_len,prefix_hit_len\n0,10,10,10\n", "prefix_hit_len must be below"),
])
def test_bad_workload_files(tmp_path, capsys, text, needle):
    path = tmp_path / "w.csv"
    path.write_text(text)
    before = path.read_bytes()
    assert main(["deploy", "--workload", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert path.read_bytes() == before


def test_workload_file_round_trip(tmp_path):
    rows = [{"arrival_s": 0.5 * i, "input_len": 100 + i, "output_len": 10, "prefix_hit_len": i} for i in range(20)]
    p = tmp_path / "w.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    w = load(str(p))
    assert len(w) == 20 and w.input_len[3] == 103 and w.prefix_hit_len[3] == 3
    q = tmp_path / "w.csv"
    q.write_text("arrival_s,input_len,output_len\n" + "\n".join(f"{r['arrival_s']},{r['input_len']},10" for r in rows))
    assert load(str(q)).prefix_hit_len.sum() == 0
    with pytest.raises(UserError, match="no such workload"):
        load(str(tmp_path / "missing.csv"))


def test_no_half_written_trace_on_error(tmp_path, capsys):
    out = tmp_path / "d.json.gz"
    assert main(["deploy", "--rate", "0", "-o", str(out)]) == 2
    assert not out.exists() and not list(tmp_path.iterdir())
    capsys.readouterr()



# ----------------------------------------------------------------------------- AF disaggregation
def test_af_cycle_is_the_pipeline_of_its_four_terms():
    from tracegen.resolve import resolve_plan
    from tracegen.serving import af
    m, hw, p = TARGET
    plan = resolve_plan("decode", m, hw, p, tp=1, dp=96, ep=96, batch=96, seq_len=4096, microbatches=1)
    for mb in (1, 2, 3):
        shape = af.AFShape(96, 48, mb)
        t = af.layer_terms(Target(m, hw, p, plan), shape)
        assert all(v > 0 for v in t.values())
        cycle = max(mb * t["attention"], mb * t["experts"], sum(t.values()))
        fixed = af.step_ms(Target(m, hw, p, plan), shape) - m.moe_layers * cycle
        assert fixed > 0                               # dense layers, LM head
        if mb == 1:
            assert cycle == pytest.approx(sum(t.values()))       # one micro-batch: nothing overlaps
    # more expert GPUs: fewer tokens each, so the expert side's time falls
    t48 = af.layer_terms(Target(m, hw, p, plan), af.AFShape(96, 48, 3))["experts"]
    t96 = af.layer_terms(Target(m, hw, p, plan), af.AFShape(96, 96, 3))["experts"]
    assert t96 < t48


def test_af_decode_runs_end_to_end_and_counts_every_gpu(capsys):
    code = main(["deploy", "--mode", "decode", "--decode-nodes", "12", "--decode-expert-nodes", "4",
                 "--requests", "3000", "--output-len", "40", "--json"])
    s = json.loads(capsys.readouterr().out)
    assert code == 0 and "AF 8 attention + 4 expert nodes" in s["plan"]
    pool = s["pools"][0]
    assert pool["gpus"] == 96 and pool["nodes"] == 12 and pool["dp"] == 64
    assert pool["output_tokens"] == pytest.approx(3000 * 39)
    code = main(["deploy", "--mode", "decode", "--decode-nodes", "12", "--decode-expert-nodes", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "expert GPU" in err[0]


def test_decode_steps_wait_for_the_busiest_dp_group():
    """A decode step runs every DP group's attention and meets in the all-to-all: one request with a
    long context makes its group the busiest, and every request's TPOT follows that group, not the
    instance's mean context. 16 x 16 requests of 1,000 tokens, then one of 60,000, on one EP16
    instance: each group takes 16 short ones (the least KV reserved first), the long one joins group 0."""
    short = synthetic(16 * 16, None, 1000, 6)
    w = Workload(np.zeros(len(short) + 1), np.r_[short.input_len, 60000], np.r_[short.output_len, 6],
                 np.zeros(len(short) + 1, np.int64), "test")
    d = Deployment("decode", decode=PoolPlan(2, 1, 16))
    r = sim(d, w)
    table = build_pools(*TARGET, d, w, CACHE)[0][0].decode
    mean = 257 / 16
    long_group = table(17.0, (16 * 1001 + 60001) / 17, mean=mean)
    others = table(16.0, 1001.0, mean=mean)
    first = r.steps["end"][0] - r.steps["start"][0]
    assert first * 1e3 == pytest.approx(max(long_group, others), rel=1e-9)
    # the instance-mean estimate (17 requests per group at the mean context) is short of it
    assert first * 1e3 > 1.02 * table(17.0, float(np.mean(np.r_[short.input_len, 60000])) + 1)
    assert np.all(np.isfinite(r.finish))


def test_kv_lives_in_one_dp_group():
    """A request's KV cache fits in one DP group or the request waits: 17 requests of just over half a
    group's KV room on an instance of 16 groups run 16 at a time (one per group), though the
    instance's total room (16 groups) would hold all 17."""
    d = Deployment("decode", decode=PoolPlan(2, 1, 16))
    probe = synthetic(1, None, 1000, 2)
    room = build_pools(*TARGET, d, probe, CACHE)[0][0].kv_tokens
    w = synthetic(17, None, int(room * 0.55), 3)
    r = sim(d, w)
    assert 17 * int(room * 0.55) < 16 * room
    assert int(r.steps["requests"].max()) == 16 and np.all(np.isfinite(r.finish))


# ----------------------------------------------------------------------------- what the metrics mean
def test_capacity_steady_is_the_full_step_rate_exactly():
    """Every prompt at t = 0 on a prefill pool: the steady window is the steps that began with prompts
    still queued, and its rate is a full step's tokens over its time - not a share of completions,
    which undercounts the prompts still in flight when the window closes."""
    d = Deployment("prefill", prefill=PoolPlan(2, 1, 16))
    r = sim(d, synthetic(400, None, 2000, 1))
    s, pool = r.steps, r.pools[0]
    full = s["queue"] > 0
    assert full.sum() >= 2 and not full[-1]
    p = summary(r)["pools"][0]
    assert p["steady_basis"] == "saturated"
    ms = float(s["end"][0] - s["start"][0])
    assert p["new_tokens_per_s_per_node_steady"] == pytest.approx(pool.token_budget * pool.dp / ms / pool.nodes)
    assert p["capacity_used"] > 0.95


def test_a_pool_at_a_trickle_is_busy_but_uses_little_of_its_capacity():
    """Prompts one at a time keep a prefill pool stepping most of the time at a fraction of its token
    budget: 'busy' and 'capacity used' tell the two apart (one 'utilisation 100 %' did not)."""
    d = Deployment("prefill", prefill=PoolPlan(2, 1, 16))
    r = sim(d, synthetic(300, 40.0, 2000, 1, seed=1))
    p = summary(r)["pools"][0]
    s = r.steps
    assert p["capacity_used"] == pytest.approx(
        float(((s["load"] / (r.pools[0].token_budget * r.pools[0].dp)) * (s["end"] - s["start"])).sum()
              / (s["end"] - s["start"]).sum()))
    assert p["capacity_used"] < 0.1 and p["utilisation"] > 2 * p["capacity_used"]
    span = float(np.nanmax(r.finish) - r.workload.arrival_s.min())
    assert p["utilisation"] == pytest.approx(float((s["end"] - s["start"]).sum()) / span)


def test_no_steady_state_is_reported_as_none_not_as_the_drain():
    """Arrivals that stop before any request finishes: the run never reached a steady state, and the
    burst of the drain afterwards is not printed as one."""
    r = sim(Deployment("colocated", prefill=PoolPlan(2, 1, 16)), synthetic(400, 50.0, 2000, 400, seed=4))
    assert np.nanmin(r.finish) > r.workload.arrival_s.max()
    p = summary(r)["pools"][0]
    assert p["steady_window_s"] is None and p["output_tokens_per_s_per_node_steady"] is None
    assert p["input_tokens_per_s_per_node_steady"] is None and p["output_tokens_per_s_per_node"] > 0


def test_open_loop_steady_window_runs_from_first_finish_to_last_entry(loaded):
    r = loaded
    for k, p in enumerate(summary(r)["pools"]):
        assert p["steady_basis"] == "arrivals"
        entry = r.first_token if p["role"] == "decode" else r.workload.arrival_s
        assert p["steady_window_s"] == pytest.approx([float(np.nanmin(r.finish)), float(entry.max())])


def test_default_capacity_run_fills_the_decode_pool(capsys):
    """`tracegen deploy --mode decode` with no --requests: sized to two full batches, so the pool runs
    full (steady basis 'saturated', every steady step at the batch limit)."""
    assert main(["deploy", "--mode", "decode", "--decode-nodes", "2", "--decode-batch", "64", "--output-len", "20",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    p = out["pools"][0]
    assert p["max_batch_per_dp"] == 64                  # the KV cache holds more: the flag's cap binds
    assert out["requests"] == 2 * 16 * 64           # two full batches of the 16 DP groups
    assert p["steady_basis"] == "saturated" and p["mean_batch_per_dp"] == pytest.approx(64.0)
    assert p["capacity_used"] == pytest.approx(1.0)


def test_batch_limit_is_the_lower_of_the_cap_and_what_the_kv_cache_holds():
    pools, _ = build_pools(*TARGET, Deployment("decode", decode=PoolPlan(2, 1, 16), max_batch=100),
                           synthetic(10, None, 2000, 20), CACHE)
    p = pools[0]
    held = math.floor(p.kv_tokens / 2020)
    assert held < 100 and p.batch_limit(2020) == held
    assert replace(p, max_batch=10).batch_limit(2020) == 10
    assert p.decode_slots(2020) == p.instances * p.dp * held
