"""Rules found on traces made outside this project (Holistic Trace Analysis' test data: an AlexNet
benchmark, a simple-add benchmark, both two iterations with no step ranges and a multi-second first
call), checked here on small synthetic traces of the same shape:
- a kernel sequence that repeats only twice on a rank with no steps is not taken for two layers (two
  iterations of a whole model repeat twice too);
- one op whose own host work held the launch path for LONG_OP_US or more is `launch_bound/long_op`
  (first-call work), not per-op `host_overhead` with CUDA-graph advice; many short ops stay overhead."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from replay.analyze import analyze
from replay.findings import LONG_OP_US
from replay.structure import MIN_PERIOD_UNSTEPPED

KERNELS = ["gemm_a", "relu_b", "gemm_c", "softmax_d", "add_e"]


def _trace(path: Path, repeats: int, first_op_us: float = 10.0, steps: bool = False,
           small_ops: int = 0) -> Path:
    """One rank: `repeats` runs of KERNELS, each kernel launched from an aten op (cpu_op around a
    cudaLaunchKernel, correlation ids); the second run's first op spends `first_op_us` on the host before its
    launch, and `small_ops` 20 us ops with no kernel run before every later launch. With `steps`,
    each run is a ProfilerStep#N."""
    ev: list[dict] = []
    cpu, gpu, corr = 0.0, 0.0, 0
    for r in range(repeats):
        t_step = cpu
        for k, name in enumerate(KERNELS):
            first = r == 1 and k == 0
            for _ in range(0 if first else small_ops):
                ev.append({"ph": "X", "cat": "cpu_op", "name": "aten::view", "pid": 1, "tid": 1, "ts": cpu,
                           "dur": 20.0, "args": {}})
                cpu += 21.0
            host = first_op_us if first else 10.0
            corr += 1
            ev.append({"ph": "X", "cat": "cpu_op", "name": "aten::conv2d" if first else f"aten::{name}",
                       "pid": 1, "tid": 1, "ts": cpu, "dur": host + 6.0, "args": {}})
            ev.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 1,
                       "ts": cpu + host, "dur": 5.0, "args": {"correlation": corr}})
            cpu += host + 7.0
            start = max(gpu, cpu)
            ev.append({"ph": "X", "cat": "kernel", "name": name, "pid": 0, "tid": 7, "ts": start, "dur": 50.0,
                       "args": {"correlation": corr, "stream": 7}})
            gpu = start + 50.0
        if steps:
            ev.append({"ph": "X", "cat": "user_annotation", "name": f"ProfilerStep#{r}", "pid": 1, "tid": 1,
                       "ts": t_step, "dur": max(cpu, gpu) - t_step, "args": {}})
            cpu = max(cpu, gpu) + 1.0
    path.write_text(json.dumps({"traceEvents": ev, "distributedInfo": {"rank": 0, "world_size": 1}}))
    return path


def test_a_sequence_run_twice_without_steps_is_not_two_layers(tmp_path):
    a = analyze(_trace(tmp_path / "twice.json", 2), use_cache=False)
    assert a.layers.empty
    assert a.structure.startswith("none (kernel-period found layers, not kept")
    assert "repeats only 2 times" in a.structure


@pytest.mark.parametrize("repeats", [MIN_PERIOD_UNSTEPPED, MIN_PERIOD_UNSTEPPED + 2])
def test_a_sequence_repeated_more_often_is_layers(tmp_path, repeats):
    a = analyze(_trace(tmp_path / "more.json", repeats), use_cache=False)
    assert a.structure == "kernel-period"
    assert a.layers["layer"].nunique() == repeats


def test_twice_within_steps_is_still_layers(tmp_path):
    """With step ranges the same two repeats per step are layers (the steps tell them apart)."""
    path = tmp_path / "stepped.json"
    ev = json.loads(_trace(tmp_path / "x.json", 4).read_text())["traceEvents"]
    kernels = sorted((e for e in ev if e["cat"] == "kernel"), key=lambda e: e["ts"])
    ops = sorted((e for e in ev if e["cat"] != "kernel"), key=lambda e: e["ts"])
    n = len(KERNELS) * 2
    for s in range(2):      # two steps of two repeats each, from the launching thread's spans
        part = ops[s * 2 * n: (s + 1) * 2 * n]
        end = max(k["ts"] + k["dur"] for k in kernels[s * n:(s + 1) * n])
        ev.append({"ph": "X", "cat": "user_annotation", "name": f"ProfilerStep#{s}", "pid": 1, "tid": 1,
                   "ts": part[0]["ts"], "dur": end - part[0]["ts"], "args": {}})
    path.write_text(json.dumps({"traceEvents": ev, "distributedInfo": {"rank": 0, "world_size": 1}}))
    a = analyze(path, use_cache=False)
    assert a.structure == "kernel-period"
    assert a.layers.groupby("step")["layer"].nunique().to_dict() == {0: 2, 1: 2}


def _launch_bound(a) -> dict[str, float]:
    return {g: sum(r["launch_bound"][g] for r in a.idle_groups.values()) for g in ("host_overhead", "long_op")}


def test_one_long_first_call_is_long_op_not_overhead(tmp_path):
    path = _trace(tmp_path / "first.json", 4, first_op_us=3 * LONG_OP_US)
    a = analyze(path, use_cache=False)
    g = _launch_bound(a)
    # the GPU idled from the previous kernel's end until the long op's launch call ended
    ev = json.loads(path.read_text())["traceEvents"]
    kernels = sorted((e for e in ev if e["cat"] == "kernel"), key=lambda e: e["ts"])
    k = kernels[len(KERNELS)]
    launch = next(e for e in ev if e["cat"] == "cuda_runtime" and e["args"]["correlation"] == k["args"]["correlation"])
    prev_end = kernels[len(KERNELS) - 1]["ts"] + kernels[len(KERNELS) - 1]["dur"]
    assert g["long_op"] == pytest.approx(launch["ts"] + launch["dur"] - prev_end)
    assert g["long_op"] > 2 * LONG_OP_US
    f = a.finding_table
    top = f[f["group"] == "long_op"]
    assert len(top) == 1 and top["call"].iloc[0] == "aten::conv2d"
    msg = next(x["message"] for x in a.findings if x["blocked_by"] == "long_op")
    assert "first-call" in msg and "CUDA graphs" not in msg


def test_many_short_ops_stay_host_overhead(tmp_path):
    """The same launch-path time spent in many 20 us ops with no kernel: per-op overhead, not long_op."""
    a = analyze(_trace(tmp_path / "many.json", 4, small_ops=60), use_cache=False)
    g = _launch_bound(a)
    assert g["long_op"] == 0.0
    assert g["host_overhead"] > LONG_OP_US
    f = a.finding_table
    assert (f.loc[f["group"] == "host_overhead", "lost_us"] >= LONG_OP_US).any()   # a long piece, many ops


def test_a_short_op_below_the_bar_is_overhead(tmp_path):
    a = analyze(_trace(tmp_path / "short.json", 4, first_op_us=0.5 * LONG_OP_US), use_cache=False)
    assert _launch_bound(a)["long_op"] == 0.0


def _two_threads(path: Path, backward_host_us: float = 200.0) -> Path:
    """A training step's shape: the main thread (tid 1) launches six forward kernels, then sits in
    loss.backward() with no runtime call while the autograd engine's thread (tid 2) launches five
    backward kernels, each after `backward_host_us` of its op's own host work."""
    ev: list[dict] = []
    cpu, gpu, corr = 0.0, 0.0, 0

    def launch(tid: int, op: str, host: float) -> None:
        nonlocal cpu, gpu, corr
        corr += 1
        ev.append({"ph": "X", "cat": "cpu_op", "name": op, "pid": 1, "tid": tid, "ts": cpu, "dur": host + 6.0,
                   "args": {}})
        ev.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": tid,
                   "ts": cpu + host, "dur": 5.0, "args": {"correlation": corr}})
        cpu += host + 7.0
        start = max(gpu, cpu)
        ev.append({"ph": "X", "cat": "kernel", "name": f"k_{op}", "pid": 0, "tid": 7, "ts": start, "dur": 30.0,
                   "args": {"correlation": corr, "stream": 7}})
        gpu = start + 30.0

    for i in range(6):
        launch(1, f"aten::fwd{i}", 10.0)
    t_bwd = cpu
    ev.append({"ph": "X", "cat": "python_function", "name": "torch/_tensor.py(...): backward", "pid": 1, "tid": 1,
               "ts": t_bwd, "dur": 5 * (backward_host_us + 7.0) + 50.0, "args": {}})
    for i in range(5):
        launch(2, f"autograd::engine::evaluate_function: Bwd{i}", backward_host_us)
    path.write_text(json.dumps({"traceEvents": ev, "distributedInfo": {"rank": 0, "world_size": 1}}))
    return path


def test_backward_gaps_are_judged_on_the_thread_that_launched_them(tmp_path):
    """The gaps before backward kernels are the autograd thread's launch path (launch_bound), not the
    main thread's wait inside backward() taken for host work (cpu_blocked_launch/host)."""
    a = analyze(_two_threads(tmp_path / "train.json"), use_cache=False)
    g = a.idle_groups[0]
    assert g["cpu_blocked_launch"]["host"] == 0.0
    assert g["launch_bound"]["host_overhead"] > 4 * 150.0       # four backward gaps of ~200 us each
    calls = set(a.finding_table.loc[a.finding_table["group"] == "host_overhead", "call"])
    assert any(c.startswith("autograd::engine::evaluate_function") for c in calls)


OUTSIDE = Path(__file__).resolve().parents[1] / "traces" / "outside" / "hta"


def test_real_alexnet_benchmark_has_no_made_up_layers_and_a_first_call_long_op():
    a = analyze(OUTSIDE / "alexnet_benchmark.json.gz", use_cache=False)
    assert a.layers.empty and "not kept" in a.structure
    top = max(a.findings, key=lambda f: f["lost_us"])
    assert top["kind"] == "launch_bound" and top["blocked_by"] == "long_op" and "aten::conv2d" in top["message"]
    g = a.idle_groups[0]["launch_bound"]
    assert g["long_op"] > 0.9 * (g["long_op"] + g["host_overhead"])


def test_real_rocm_trace_launches_are_recognised():
    """HIP's launch calls are launches: the idle time is explained (launch path, host work), not queued."""
    a = analyze(OUTSIDE / "mi250_minitoy_train_ROCm6_2_kineto.json.gz", use_cache=False)
    idle = sum(a.idle_totals[0].values())
    assert a.idle_totals[0]["unexplained"] < 0.05 * idle
    e = a.events
    launches = e[(e["device"] == "cpu") & e["launch"]]
    assert set(launches["name"].astype(str)) >= {"hipLaunchKernel", "hipExtModuleLaunchKernel"}
    assert launches["tid"].nunique() == 2            # the main thread and the autograd engine's
    assert a.idle_groups[0]["launch_bound"]["long_op"] > 0      # step 1's first AccumulateGrad on the backward thread


def test_a_trace_without_cpu_activity_says_it_cannot_tell(tmp_path):
    """The same launch-bound trace without its CPU events (filtered out): its idle time is unexplained/no_launch
    (not 'queued' with cross-stream advice, not the GPU's kernel switch), and suspicious_input says why."""
    full = _trace(tmp_path / "full.json", 4, small_ops=3)
    d = json.loads(full.read_text())
    d["traceEvents"] = [e for e in d["traceEvents"] if e["cat"] == "kernel"]
    gpu_only = tmp_path / "gpu-only.json"
    gpu_only.write_text(json.dumps(d))
    a, b = analyze(full, use_cache=False), analyze(gpu_only, use_cache=False)
    assert a.idle_totals[0]["launch_bound"] > 0.5 * sum(a.idle_totals[0].values())     # the truth
    g = b.idle_groups[0]
    idle = sum(b.idle_totals[0].values())
    assert g["unexplained"]["no_launch"] == pytest.approx(idle - g["unexplained"]["edge"])
    assert g["unexplained"]["queued"] == 0.0 and g["kernel_switch"]["switch"] == 0.0
    assert sum(a.idle_totals[0].values()) == pytest.approx(idle)
    missing = [s for s in b.suspicious if s["what"] == "launches_missing"]
    assert len(missing) == 1 and missing[0]["count"] == 4 * len(KERNELS) and missing[0]["ranks"] == [0]
    assert not [s for s in a.suspicious if s["what"] == "launches_missing"]


def test_one_file_with_two_gpus_is_a_rank_per_gpu(tmp_path):
    """A single process driving two GPUs (e.g. a model split across devices): one file with kernels on GPU
    pids 0 and 1 is analysed as two ranks, one per GPU, each with the process's host events, and said so;
    each GPU's figures are its own kernels' (here the first half of the kernels on GPU 0, the second on 1).
    A one-GPU file is one rank, and nothing is said."""
    one = _trace(tmp_path / "one.json", 4)
    d = json.loads(one.read_text())
    kernels = [e for e in d["traceEvents"] if e["cat"] == "kernel"]
    for e in kernels[len(kernels) // 2:]:
        e["pid"] = 1
    two = tmp_path / "two.json"
    two.write_text(json.dumps(d))
    a = analyze(two, use_cache=False)
    assert [r["rank"] for r in a.ranks] == [0, 1]
    for r, part in zip(a.ranks, (kernels[:len(kernels) // 2], kernels[len(kernels) // 2:])):
        assert r["compute_us"] == pytest.approx(sum(e["dur"] for e in part))
        assert r["span_us"] == pytest.approx(part[-1]["ts"] + part[-1]["dur"] - part[0]["ts"])
    got = [s for s in a.suspicious if s["what"] == "one_process_several_gpus"]
    assert len(got) == 1 and got[0]["ranks"] == [0, 1] and "GPU pids 0, 1" in got[0]["message"]
    assert not {s["what"] for s in a.suspicious} & {"several_gpus", "identical_ranks"}
    b = analyze(one, use_cache=False)
    assert [r["rank"] for r in b.ranks] == [0]
    assert not [s for s in b.suspicious if s["what"] in ("one_process_several_gpus", "several_gpus")]


def test_a_second_gpu_of_one_process_gives_its_figures_alone(tmp_path):
    """A real one-GPU capture with its kernels copied onto a second device (3 us later, their own ids):
    rank 0 reads exactly as the original file, and rank 1's busy time is the same."""
    import gzip
    src = Path(__file__).resolve().parents[1] / "traces" / "observed" / "hf-decode" / "hf-decode-nosync.json.gz"
    d = json.load(gzip.open(src, "rt"))
    copies = []
    for e in d["traceEvents"]:
        if e.get("cat") == "kernel":
            c = json.loads(json.dumps(e))
            c.update(pid=1, ts=e["ts"] + 3.0)
            c["args"].update(device=1, correlation=e["args"]["correlation"] + 10 ** 7)
            copies.append(c)
    d["traceEvents"] += copies
    two = tmp_path / "two.json"
    two.write_text(json.dumps(d))
    a, ref = analyze(two, use_cache=False), analyze(src, use_cache=False)
    same = [k for k in ref.ranks[0] if k != "peer_wait_us"]          # a one-rank file has no peers to wait for
    assert {k: a.ranks[0][k] for k in same} == {k: ref.ranks[0][k] for k in same}
    assert a.idle_totals[0] == ref.idle_totals[0]
    assert a.ranks[1]["compute_us"] == pytest.approx(ref.ranks[0]["compute_us"])


def test_one_step_skips_a_last_profiler_step_without_gpu_work(tmp_path):
    """HTA's ROCm trace ends with a ProfilerStep range that holds no GPU work: the step a what-if or
    compare takes is the last one with GPU work, not that empty one."""
    from replay.analyze import analyze_one_step
    path = _trace(tmp_path / "steps.json", 3, steps=True)
    d = json.loads(path.read_text())
    end = max(e["ts"] + e.get("dur", 0) for e in d["traceEvents"])
    d["traceEvents"].append({"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#3", "pid": 1, "tid": 1,
                             "ts": end + 10.0, "dur": 5.0, "args": {}})
    path.write_text(json.dumps(d))
    a, note = analyze_one_step(path, use_cache=False)
    assert note.startswith("step 2 of steps 0, 1, 2")
    assert (a.events["device"] == "gpu").any()


RULES = Path(__file__).resolve().parents[1] / "traces" / "observed" / "rules-h100"
RULES_TRUTH = json.loads((RULES / "capture.json").read_text())["runs"]


def test_real_hook_pause_is_found_once_per_step_in_the_op_that_ran_it():
    truth = RULES_TRUTH["train-threads"]
    a = analyze(RULES / truth["file"], use_cache=False)
    f = a.finding_table
    big = f[f["lost_us"] >= 0.9 * truth["pause_s"] * 1e6]
    assert len(big) == truth["steps"] * truth["pauses_per_step"]
    assert set(big["group"]) == {"long_op"} and big["step"].nunique() == truth["steps"]
    assert all("AccumulateGrad" in c for c in big["call"])
    # two launching threads, each gap judged on the one that launched its kernel: the backward's on the
    # autograd thread (its ops' launch path), the forward's on the main thread (aten::linear's), not the
    # forward's on the autograd thread, idle then (44 'host work' pieces, 4.0 ms, when one view served all)
    e = a.events
    assert e[(e["device"] == "cpu") & e["launch"]]["tid"].nunique() == 2
    lb = f[f["kind"] == "launch_bound"]
    assert (lb["call"].str.startswith("autograd::engine")).sum() >= truth["steps"] * truth["layers"]
    assert (lb["call"] == "aten::linear").sum() >= truth["steps"]


def test_real_cudnn_autotuning_is_a_long_op_not_per_op_overhead():
    truth = RULES_TRUTH["first-call"]
    a = analyze(RULES / truth["file"], use_cache=False)
    g = a.idle_groups[0]["launch_bound"]
    assert g["long_op"] > 0.9 * (g["long_op"] + g["host_overhead"])
    top = max((x for x in a.findings if x["kind"] == "launch_bound"), key=lambda x: x["lost_us"])
    assert top["blocked_by"] == "long_op" and "aten::conv2d" in top["message"]
    assert a.layers.empty                        # two iterations, no steps: no layers made up


def test_idle_before_the_first_compute_kernel_is_judged_like_any_gap():
    """The capture's first GPU work is the input's copy; the first compute kernel runs 0.95 s later,
    after the first call's autotuning on the CPU. That stretch is the CPU's long op, not 'the profiled
    window's edge: profile whole steps' (949 ms of it, before); the largest finding says so."""
    truth = RULES_TRUTH["first-call"]
    a = analyze(RULES / truth["file"], use_cache=False)
    d = a.to_dict()["ranks"][0]
    assert d["idle_by_group_us"]["unexplained"]["edge"] < 1.0
    assert d["idle_us"]["unexplained"] < 0.001 * d["compute_idle_us"]
    top = max(a.findings, key=lambda x: x["lost_us"])
    assert (top["kind"], top["blocked_by"]) == ("launch_bound", "long_op") and top["lost_us"] > 900_000


def test_cuda_activity_alone_still_records_the_launches():
    truth = RULES_TRUTH["gpu-only"]
    assert not truth["cpu_profiled"]
    a = analyze(RULES / truth["file"], use_cache=False)
    assert not [s for s in a.suspicious if s["what"] == "launches_missing"]
    assert a.idle_groups[0]["unexplained"]["no_launch"] == 0.0


def _steps_from_two_threads(path: Path, repeats: int, threads: tuple[int, int]) -> Path:
    """`repeats` training steps with no step ranges: each launches three 'forward' kernels from
    threads[0] and three 'backward' kernels from threads[1] (the same thread twice: one launcher)."""
    ev: list[dict] = []
    cpu, gpu, corr = 0.0, 0.0, 0
    for _ in range(repeats):
        for tid, names in ((threads[0], ("fwd_a", "fwd_b", "fwd_c")), (threads[1], ("bwd_a", "bwd_b", "bwd_c"))):
            for name in names:
                corr += 1
                ev.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": tid,
                           "ts": cpu, "dur": 5.0, "args": {"correlation": corr}})
                cpu += 20.0
                start = max(gpu, cpu)
                ev.append({"ph": "X", "cat": "kernel", "name": name, "pid": 0, "tid": 7, "ts": start, "dur": 40.0,
                           "args": {"correlation": corr, "stream": 7}})
                gpu = start + 40.0
    path.write_text(json.dumps({"traceEvents": ev, "distributedInfo": {"rank": 0, "world_size": 1}}))
    return path


def test_repeats_launched_by_two_threads_are_steps_not_layers(tmp_path):
    a = analyze(_steps_from_two_threads(tmp_path / "two.json", 4, (1, 2)), use_cache=False)
    assert a.layers.empty and "launched by 2 or more threads" in a.structure
    one = analyze(_steps_from_two_threads(tmp_path / "one.json", 4, (1, 1)), use_cache=False)
    assert one.structure == "kernel-period" and one.layers["layer"].nunique() == 4


def test_real_cuda_only_training_steps_are_not_layers():
    """The real capture that showed it: three training steps, no ProfilerStep (CUDA-only profiling),
    were three 'layers'; their kernels come from the main and the autograd threads."""
    a = analyze(RULES / RULES_TRUTH["gpu-only"]["file"], use_cache=False)
    assert a.layers.empty and "threads" in a.structure


HTA_SAMPLED_PCT = 11.81      # HTA 0.5.0 get_comm_comp_overlap on sampled_rank-0 (traces/outside/hta/README.md)


def test_hidden_share_matches_hta_on_the_kernels_hta_keeps():
    """The measuring core on a trace made outside: over the kernels HTA keeps (launched before the last
    ProfilerStep began: it drops the last step) the hidden share is HTA's to its two decimals; over
    the whole trace, as `replay analyze` reports it, it is larger here (the last step overlaps more)."""
    from tracegen.base.intervals import intersection, length, union
    a = analyze(OUTSIDE / "sampled_rank-0.json.gz", use_cache=False)
    e = a.events
    cpu = e[e["device"] == "cpu"]
    last = cpu.loc[cpu["name"].astype(str).str.startswith("ProfilerStep"), "start_us"].max()
    kept = set(cpu.loc[(cpu["correlation"] >= 0) & (cpu["start_us"] < last), "correlation"])
    g = e[(e["device"] == "gpu") & e["correlation"].isin(kept)]

    def iv(d):
        s = d["start_us"].to_numpy()
        return union(s, s + d["dur_us"].to_numpy())
    comm, comp = g[g["klass"] == "comm"], g[g["klass"] == "compute"]
    assert 100 * length(*intersection(iv(comm), iv(comp))) / length(*iv(comm)) == pytest.approx(HTA_SAMPLED_PCT,
                                                                                                abs=0.005)
    assert a.ranks[0]["hidden_comm_pct"] > HTA_SAMPLED_PCT + 1


@pytest.mark.parametrize("name", ["cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx",
                                  "cudaGraphLaunch", "cuGraphLaunch", "cudaLaunchCooperativeKernel",
                                  "cuLaunchCooperativeKernel", "hipLaunchKernel", "hipExtLaunchKernel",
                                  "hipModuleLaunchKernel", "hipExtModuleLaunchKernel", "hipGraphLaunch"])
def test_runtime_and_driver_launch_calls_are_launches(name):
    from replay.taxonomy import load_taxonomy
    assert load_taxonomy().launch.search(name)


@pytest.mark.parametrize("name", ["cudaStreamSynchronize", "cudaGetDevice", "hipGetDevicePropertiesR0600",
                                  "cudaEventRecord", "hipMemcpyWithStream"])
def test_other_runtime_calls_are_not_launches(name):
    from replay.taxonomy import load_taxonomy
    assert not load_taxonomy().launch.search(name)


def test_pytorch_1_9_kineto_categories_are_read_as_todays():
    """Kineto's 2021 names (Kernel, Runtime, Operator, Memcpy, Memset) were 'no GPU events'. The compute
    busy time equals a plain sweep of the raw file's Kernel events; the 6 ProfilerSteps are steps, never a
    framework op that 'held the launch path'; the zero-length kernels are named as whole-microsecond rounding."""
    import gzip
    path = Path(__file__).resolve().parents[1] / "traces" / "outside" / "kineto" / "worker0.1623212756351.pt.trace.json.gz"
    raw = json.loads(gzip.open(path).read())["traceEvents"]
    iv = sorted((e["ts"], e["ts"] + e["dur"]) for e in raw if e.get("cat") == "Kernel")
    busy, end = 0.0, -1.0
    for s, e in iv:
        if e > end:
            busy += e - max(s, end)
            end = e
    a = analyze(path, use_cache=False)
    r = a.ranks[0]
    assert r["compute_us"] == pytest.approx(busy, abs=1.0) and sorted(set(a.steps["step"])) == list(range(5, 11))
    assert not any("ProfilerStep" in (f.get("message") or "") and f["kind"] == "launch_bound" for f in a.findings)
    zero = next(x for x in a.suspicious if x["what"] == "zero_duration")
    assert "whole microseconds" in zero["message"]


def test_an_ascend_trace_is_named_not_blamed_on_cuda(tmp_path, capsys):
    """torch_npu's trace_view.json puts NPU tasks under a process named 'Ascend Hardware', with no kernel
    category: replay reads no GPU timeline there and says it is an Ascend trace (exit 2, one line),
    not that ProfilerActivity.CUDA was forgotten."""
    from replay.cli import main
    ev = [{"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "Ascend Hardware"}},
          {"ph": "M", "name": "thread_name", "pid": 2, "tid": 2, "args": {"name": "Stream 2"}}]
    ev += [{"ph": "X", "name": "MatMulV2", "pid": 2, "tid": 2, "ts": str(1000 + 10.5 * i), "dur": 8.0,
            "args": {"Task Type": "AI_CORE", "Stream Id": 2}} for i in range(20)]
    ev += [{"ph": "X", "name": "aten::mm", "pid": 100, "tid": 100, "ts": str(990 + 10.5 * i), "dur": 3.0,
            "cat": "cpu_op"} for i in range(20)]
    p = tmp_path / "trace_view.json"
    p.write_text(json.dumps(ev))
    assert main(["analyze", str(p), "--no-cache"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Ascend (torch_npu) trace" in err[0] and "CUDA" not in err[0].split("(kernels")[0]


def test_a_trace_of_another_device_names_what_it_holds(tmp_path, capsys):
    """HTA's MTIA traces (Meta's accelerator) hold device work as `mtia_ccp_events` beside `cpu_op`s, no CUDA
    kernel: replay has no GPU timeline to read there, and its one line names the categories it found, largest
    first, so the user sees it is another device's trace, not an empty capture."""
    from replay.cli import main
    ev = [{"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 1, "tid": 1, "ts": 10.0 * i, "dur": 3.0}
          for i in range(30)]
    ev += [{"ph": "X", "cat": "mtia_ccp_events", "name": "mm_kernel", "pid": 2, "tid": 7, "ts": 10.0 * i + 4,
            "dur": 5.0} for i in range(20)]
    p = tmp_path / "mtia.json"
    p.write_text(json.dumps({"traceEvents": ev}))
    before = p.read_bytes()
    assert main(["analyze", str(p), "--no-cache"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no GPU events" in err[0], err
    assert "cpu_op x30, mtia_ccp_events x20" in err[0], err
    assert p.read_bytes() == before
    # a folder of such ranks says the same, its ranks' counts summed
    d = tmp_path / "ranks"
    d.mkdir()
    for r in (0, 1):
        (d / f"rank{r}.json").write_text(json.dumps({"traceEvents": ev}))
    assert main(["analyze", str(d), "--no-cache"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cpu_op x60, mtia_ccp_events x40" in err[0], err


def test_an_xla_trace_is_named_and_uncategorised_events_are_counted(tmp_path, capsys):
    """XLA's profiler (JAX, TensorFlow) names its processes /device:GPU:0 and /host:CPU and gives its events
    no category: replay has no Kineto kernels to read there and says whose trace it is, in one line (exit 2);
    a trace whose events carry no category at all, under other names, counts them as 'no category' (the line
    once read 'its events:  x200')."""
    from replay.cli import main
    ev = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
          {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}}]
    ev += [{"ph": "X", "pid": 1, "tid": 7, "ts": 25.0 * i, "dur": 20.0, "name": f"fusion.{i % 7}"} for i in range(100)]
    ev += [{"ph": "X", "pid": 2, "tid": 1, "ts": 25.0 * i, "dur": 3.0, "name": "ThunkExecutor::Execute"}
           for i in range(100)]
    p = tmp_path / "jax.json"
    p.write_text(json.dumps({"displayTimeUnit": "ns", "traceEvents": ev}))
    assert main(["analyze", str(p), "--no-cache"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "an XLA profiler trace" in err[0], err
    q = tmp_path / "plain.json"
    q.write_text(json.dumps({"traceEvents": ev[2:]}))
    assert main(["analyze", str(q), "--no-cache"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no category x200" in err[0] and "XLA" not in err[0], err
