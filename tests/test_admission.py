"""The deployment simulator's admission policy on its own (tracegen/serving/simulate.ServingSimulation):
a request reserves its whole KV (prompt + every output token) in the DP group with the least reserved,
and is admitted only while that group has a batch slot and the KV room."""
from __future__ import annotations

import numpy as np

from tracegen.serving.simulate import Pool, ServingSimulation
from tracegen.serving.workload import synthetic


def _sim(requests: int = 6, dp: int = 2, max_batch: float = 0, kv_tokens: float = 5000) -> ServingSimulation:
    pool = Pool("decode", 1, 8, dp, 8, None, None, max_batch=max_batch, kv_tokens=kv_tokens)
    return ServingSimulation(synthetic(requests, None, 1000, 200), [pool], "decode")


def test_a_request_reserves_its_whole_kv_in_the_least_reserved_group():
    s = _sim()
    inst = s.insts[0]
    assert s.slot(inst, 0) == (0, 1200.0)
    s.hold(inst, 0)
    assert s.slot(inst, 1) == (1, 1200.0)          # group 0 holds 1,200 tokens now
    s.hold(inst, 1)
    assert inst.g_reserved.tolist() == [1200.0, 1200.0] and inst.holding == 2 and inst.reserved == 2400.0


def test_admission_stops_at_the_kv_room_and_the_batch_cap():
    s = _sim(kv_tokens=2500)                        # two requests per group fit (2 x 1,200), not three
    inst = s.insts[0]
    admitted = 0
    for r in range(6):
        if not s.fits(inst, r):
            break
        s.hold(inst, r)
        admitted += 1
    assert admitted == 4
    capped = _sim(max_batch=1)
    inst = capped.insts[0]
    for r in range(2):
        assert capped.fits(inst, r)
        capped.hold(inst, r)
    assert not capped.fits(inst, 2)                 # one request per group


def test_release_frees_exactly_what_was_held():
    s = _sim(kv_tokens=2500)
    inst = s.insts[0]
    for r in range(4):
        s.hold(inst, r)
    s.release(inst, np.array([0, 3]))
    assert inst.holding == 2 and inst.reserved == 2400.0 and set(inst.group_of) == {1, 2}
    assert s.fits(inst, 4)


def test_the_simulation_drains_and_respects_the_cap():
    from tracegen.serving.steptime import StepTable
    from tracegen.plan import Plan
    table = StepTable(Plan(phase="decode", batch=1, seq_len=1000), np.array([1.0, 8.0]), np.array([1.0, 4000.0]), np.full((2, 2), 10.0))
    pool = Pool("decode", 1, 8, 2, 8, None, table, max_batch=1, kv_tokens=5000)
    res = ServingSimulation(synthetic(6, None, 1000, 5), [pool], "decode").run()
    assert not np.isnan(res.finish).any()
    assert res.steps["requests"].max() <= 2         # one per DP group at a time
