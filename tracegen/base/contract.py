"""The trace contract: what a tracegen trace holds and what replay reads from it.

The trace file is the only interface between tracegen (which writes it) and replay / viz (which
read it). Every name the two sides share lives here: the format version, the tracks and their
thread ids, slice and flow categories, the stage names and the stream each runs on, the idle
causes, and every key of a slice's `args` and of the trace's `otherData`, with its type and
meaning. docs/trace-contract.md is this module in prose; tests/test_contract.py checks that every
key tracegen writes is declared here, every declared key is written, and that the readers read
exactly the declared keys."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FORMAT_VERSION = 2          # otherData["format_version"]; 1: traces written before it was recorded
GENERATOR = "tracegen"      # otherData["generator"] starts with this word in every generated trace
DEPLOY_FORMAT = "moe-timeline-deploy/1"   # otherData["format"] of a deployment trace (tracegen deploy):
                                          # pools, steps and requests, no kernels - not a layer timeline

# ----------------------------------------------------------------------------- streams and tracks
COMPUTE, COMM = "compute", "comm"      # the two GPU streams of a rank (a stage runs on one of them)
CPU, PROXY = "cpu", "proxy"            # the CPU launch thread, and the CPU proxy thread (cpu-proxy backend)
TRACKS: dict[str, tuple[int, str]] = {  # track -> (thread id in the trace, thread name shown in Perfetto)
    CPU: (1, "CPU launch"), COMPUTE: (2, "compute stream"), COMM: (3, "comm stream"), PROXY: (4, "CPU proxy"),
}
PROCESS_NAME = "rank {rank}"           # one process (pid = rank) per rank

# ----------------------------------------------------------------------------- slice categories
CAT_LAUNCH = "cpu_launch"      # CPU: launching a stage's kernels (args: kernels)
CAT_WAIT = "cpu_wait"          # CPU: blocked until the dispatch's received counts are back
CAT_PROXY = "cpu_proxy"        # CPU proxy thread: posting a non-IBGDA transfer
CAT_SCHED = "cpu_sched"        # CPU: the step's scheduling before its first launch (--sched-ms)
CAT_STAGE = {COMPUTE: COMPUTE, COMM: COMM}   # GPU stage slices take their stream's name as category
# Kineto (PyTorch profiler) categories replay also understands
KINETO_GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset", "gpu_user_annotation")
KINETO_ANNOTATION = "user_annotation"        # CPU ranges from record_function
KINETO_GPU_ANNOTATION = "gpu_user_annotation"
KINETO_CPU_OPS = ("cpu_op", "python_function")   # framework ops: no analysis reads them
# PyTorch 1.8-1.10's Kineto named its categories otherwise (the TensorBoard plugin's samples, 2021); replay
# reads them as today's
KINETO_LEGACY_CATS = {"Kernel": "kernel", "Memcpy": "gpu_memcpy", "Memset": "gpu_memset", "Runtime": "cuda_runtime",
                      "Operator": "cpu_op"}
GPU_CATS = frozenset((*KINETO_GPU_CATS, COMPUTE, COMM))   # categories of work that ran on a GPU

# ----------------------------------------------------------------------------- flows and counters
FLOW_DEPENDENCY = "dependency"   # a stage's input produced on the other stream (source -> consumer)
FLOW_LAUNCH = "launch"           # CPU launch slice -> the stage it launched
KINETO_LAUNCH_FLOW = "ac2g"      # Kineto's runtime call -> kernel link
LAUNCH_FLOWS = (KINETO_LAUNCH_FLOW, FLOW_LAUNCH)   # the correlation column carries the same link
COUNTER_SMS = "SMs in use"       # counter per rank; args: {compute: SMs computing, comm: SMs held by comm}

# ----------------------------------------------------------------------------- stages
STAGE_STREAM: dict[str, str] = {     # every stage name, and the stream it runs on
    "ATTN": COMPUTE, "ATTN-0": COMPUTE, "ATTN-1": COMPUTE, "SHARED": COMPUTE, "MLP": COMPUTE,
    "DISPATCH": COMM, "COMBINE": COMM,
    "HEAD": COMPUTE,     # per step, after the last layer: final norm, LM head, sampling
}
PROGRAM: dict[tuple[str, str], tuple[str, ...]] = {   # (phase, layer type) -> stage order of one micro-batch
    ("prefill", "moe"): ("ATTN", "SHARED", "DISPATCH", "MLP", "COMBINE"),
    ("decode", "moe"): ("ATTN-0", "ATTN-1", "SHARED", "DISPATCH", "MLP", "COMBINE"),
    ("prefill", "dense"): ("ATTN", "MLP"),
    ("decode", "dense"): ("ATTN-0", "ATTN-1", "MLP"),
    ("prefill", "head"): ("HEAD",),      # the step's tail: LM head (and, decode with MTP, the MTP module's)
    ("decode", "head"): ("HEAD",),
}

# ----------------------------------------------------------------------------- idle causes
# Why a rank's compute stream had nothing to run; the scheduler books its idle time under these and
# replay's findings name the same causes.
WAITING_ON_COMM = "waiting_on_comm"        # the next compute's inputs were still in flight
CPU_BLOCKED_LAUNCH = "cpu_blocked_launch"  # not launched yet: the CPU sat in a blocking call
LAUNCH_BOUND = "launch_bound"              # not launched yet: the CPU was busy launching earlier work
WAITING_ON_PEER = "waiting_on_peer"        # a collective waited for a late rank (any idle while it did)
IDLE_CAUSES = (CPU_BLOCKED_LAUNCH, LAUNCH_BOUND, WAITING_ON_COMM, WAITING_ON_PEER)   # tracegen schedules these
WAITING_ON_COPY = "waiting_on_copy"        # observed only: a memcpy / memset ran while compute idled
KERNEL_SWITCH = "kernel_switch"            # observed only: the GPU's own few-microsecond start between kernels
                                           # already queued back to back
STEP_BOUNDARY = "step_boundary"            # observed only: from one step's last compute to the next step's
                                           # first (the step's sync, the host's per-step work, the first launch)
OBSERVED_IDLE_CAUSES = (WAITING_ON_PEER, CPU_BLOCKED_LAUNCH, LAUNCH_BOUND, WAITING_ON_COMM, WAITING_ON_COPY,
                        KERNEL_SWITCH, STEP_BOUNDARY)   # what replay reports (tracegen's causes and more)
UNEXPLAINED = "unexplained"                # replay's remainder: idle no cause accounts for
# What replay groups each cause by (findings' `blocked_by`, the summaries' breakdown): for the CPU-side
# causes, what the launching thread sat in; for the remainder, the reason seen.
IDLE_GROUPS: dict[str, tuple[str, ...]] = {
    WAITING_ON_PEER: ("peer",),
    CPU_BLOCKED_LAUNCH: ("sync",           # a synchronising call (cudaStreamSynchronize, aten::item, ...)
                         "dispatch",       # a dispatch waiting for its received counts (DeepEP normal)
                         "pipeline_fill",  # the same, in the first layer of a step: nothing to overlap yet
                         "host"),          # host work outside any framework op (Python, a sleep, a scheduler)
    LAUNCH_BOUND: ("host_overhead",        # the CPU on the launch path: ops' host work, Python glue, launches
                   "long_op",              # one op's own host work held it (first-call autotuning, loading, compiling)
                   "submission"),          # a launched kernel's start latency on an idle GPU
    WAITING_ON_COMM: ("comm",),
    WAITING_ON_COPY: ("copy",),
    KERNEL_SWITCH: ("switch",),
    STEP_BOUNDARY: ("step",),
    UNEXPLAINED: ("edge",                  # after the rank's last compute kernel, no communication left to wait for
                  "queued",                # launched before the gap, started late (a cross-stream wait)
                  "no_launch"),            # the trace has no launch call for the next kernel: cannot be told
}
RUNTIME_CATS = ("cuda_runtime", "cuda_driver", CAT_LAUNCH, CAT_WAIT)   # CPU calls into the GPU runtime


# ----------------------------------------------------------------------------- keys
@dataclass(frozen=True)
class Key:
    """One key of a slice's args or of otherData."""
    name: str
    type: Any             # the JSON value's Python type (int, float, str, bool, dict, list)
    on: str               # which slices carry it (args), or when it is present (otherData)
    meaning: str
    read: bool = True     # False: written for people (Perfetto's args panel); no tool reads it


SLICE_ARGS: tuple[Key, ...] = (
    Key("layer", int, "every stage slice, CPU and GPU", "model layer index"),
    Key("microbatch", int, "every stage slice", "micro-batch index (0, 1 with two-batch overlap)"),
    Key("stage", str, "every stage slice", "stage name, one of STAGE_STREAM"),
    Key("rank", int, "every stage slice", "the rank (also the process id)"),
    Key("correlation", int, "every stage slice", "one id per (rank, stage): the launch slice and the GPU slice "
                                                  "it launched share it, as Kineto's correlation ids do"),
    Key("kind", str, "GPU slices", "the stream the stage ran on: 'compute' or 'comm' (the event table's "
                                    "stage_stream column)"),
    Key("flops", float, "GPU slices", "FLOPs of the stage's ops"),
    Key("bytes", float, "GPU slices", "compute: HBM bytes; comm: bytes sent over the links"),
    Key("work_us", float, "GPU slices", "compute: time at full SMs; comm: transfer time (latency excluded)"),
    Key("ops_us", dict, "GPU slices", "op name -> predicted microseconds (the ops behind the stage)"),
    Key("cost_us", dict, "GPU slices", "cost term -> microseconds (compute, memory, floor, links, latency)",
        read=False),
    Key("latency_us", float, "comm slices", "fixed cost before data flows (DeepEP normal: the count exchange)"),
    Key("post_us", float, "comm slices", "CPU proxy posting time (cpu-proxy backend)"),
    Key("sms", int, "comm slices", "SMs the all-to-all holds while in flight"),
    Key("blocking", bool, "comm slices and CPU waits", "the CPU waits for this dispatch's received counts"),
    Key("backend", str, "comm slices", "all-to-all backend (normal, ibgda, cpu-proxy, ascend-fused, pcie-copy)",
        read=False),
    Key("load_factor", float, "MLP slices of MoE layers on ranks with load != 1", "this rank's expert load "
                                                                                  "relative to the mean"),
    Key("kernels", int, "CPU launch slices", "kernels the stage launches (each costs launch_us of CPU)"),
    Key("sched_ms", float, "the CPU's scheduler slice", "CPU time per step spent scheduling before the first launch "
                                                        "(--sched-ms)", read=False),
)

OTHER_DATA: tuple[Key, ...] = (
    Key("generator", str, "always", "'tracegen <version>': marks a generated trace"),
    Key("format_version", int, "always", "FORMAT_VERSION of the writer"),
    Key("model", str, "always", "the model's display name (format 1 traces: looked up in the catalog)"),
    Key("model_spec", dict, "always", "the model as a catalog entry ({key: fields}), so the trace replays "
                                      "without the user's --model-file"),
    Key("hardware", str, "always", "the hardware's display name (format 1 traces: looked up in the catalog)"),
    Key("hardware_key", str, "always", "the hardware's catalog key (or the user file's entry name)", read=False),
    Key("hardware_spec", dict, "always", "the hardware as it ran (preset table and what-ifs applied), as a "
                                         "catalog entry, so the trace replays without the user's "
                                         "--hardware-file"),
    Key("preset", str, "always", "cost-model preset name"),
    Key("comm_in_situ", bool, "always", "whether SM-holding communication was slowed beside compute (the "
                                        "hardware's in_situ term; tracegen --in-situ): replay whatif takes it out "
                                        "and puts it back as the new schedule overlaps"),
    Key("plan", dict, "always", "every field of the deployment plan (tracegen.plan.Plan)"),
    Key("ranks", int, "always", "ranks emitted"),
    Key("layers", list, "always", "model layer indices emitted", read=False),
    Key("dense_layers", list, "always", "which of them are dense"),
    Key("launch_us", float, "always", "CPU cost per kernel launch"),
    Key("sm_count", int, "always", "SMs per GPU", read=False),
    Key("load_factors", list, "always", "per-rank expert load (mean 1)"),
    Key("span_us", float, "always", "scheduled span, first to last slice", read=False),
    Key("idle_us", list, "always", "per rank: compute idle time per idle cause, as scheduled (the round-trip "
                                   "tests hold replay's findings to it)", read=False),
    Key("power", dict, "hardware with a power model (default preset)", "the step's mean draw at the boost clock "
                                                                       "(demand_w), the clock drop it sets (throttle, "
                                                                       "0-1) and the compute-bound share of the span "
                                                                       "(tracegen/power.py); replay re-times the "
                                                                       "trace at that clock"),
    Key("tbo", str, "always", "launch order: off, proper, improper, an order file, or 'as observed' (whatif)",
        read=False),
    Key("whatif", dict, "traces written by replay whatif", "source file, the changes applied and the assumptions "
                                                          "made (replay/stagegraph.py)", read=False),
)

ARG_NAMES = tuple(k.name for k in SLICE_ARGS)
OTHER_DATA_NAMES = tuple(k.name for k in OTHER_DATA)


def read_keys(keys: tuple[Key, ...]) -> tuple[Key, ...]:
    """The keys some tool reads back (the rest are for people)."""
    return tuple(k for k in keys if k.read)


def markdown() -> str:
    """The contract's tables as Markdown (docs/trace-contract.md embeds them; a test keeps it current)."""
    def keys(rows: tuple[Key, ...]) -> list[str]:
        out = ["| key | type | on | meaning | read by a tool |", "|---|---|---|---|---|"]
        out += [f"| `{k.name}` | {k.type.__name__} | {k.on} | {k.meaning} | {'yes' if k.read else 'no'} |"
                for k in rows]
        return out
    lines = [f"Format version: **{FORMAT_VERSION}**.", "", "### Tracks (one process per rank, pid = rank)", "",
             "| track | tid | thread name |", "|---|---|---|"]
    lines += [f"| {t} | {tid} | {name} |" for t, (tid, name) in TRACKS.items()]
    lines += ["", "### Slice categories", "", "| category | slices |", "|---|---|",
              f"| `{CAT_LAUNCH}` | CPU launch thread: launching a stage's kernels |",
              f"| `{CAT_WAIT}` | CPU launch thread: blocked until the dispatch's received counts are back |",
              f"| `{CAT_PROXY}` | CPU proxy thread: posting a non-IBGDA transfer |",
              f"| `{COMPUTE}`, `{COMM}` | a stage on the compute or comm stream |",
              "", "### Flows and counters", "",
              f"- flow `{FLOW_DEPENDENCY}`: a stage's input produced on the other stream",
              f"- flow `{FLOW_LAUNCH}`: a CPU launch slice to the stage it launched",
              f"- counter `{COUNTER_SMS}` per rank, args `compute` and `comm` (SMs; on hardware whose "
              "all-to-all runs on vector cores of its own, Ascend's AIV, `comm` counts those and `compute` "
              "keeps every cube core)",
              "", "### Stages", "", "| stage | stream |", "|---|---|"]
    lines += [f"| {st} | {stream} |" for st, stream in STAGE_STREAM.items()]
    lines += ["", "| phase, layer | stage order of one micro-batch |", "|---|---|"]
    lines += [f"| {ph}, {kind} | {' -> '.join(stages)} |" for (ph, kind), stages in PROGRAM.items()]
    lines += ["", "A stage that runs nothing is not drawn: with EP1 (one GPU holds every expert) no all-to-all "
              "runs, so an MoE layer's DISPATCH and COMBINE have no slice, no launch and no flow "
              "(tracegen/preset.py `local_experts`; the seed's decode convention, every token over one NIC, "
              "keeps them)."]
    lines += ["", "### Idle causes", "", "Scheduled by tracegen (and measured by replay): " +
              ", ".join(f"`{c}`" for c in IDLE_CAUSES) + ". Measured by replay only: " +
              ", ".join(f"`{c}`" for c in OBSERVED_IDLE_CAUSES if c not in IDLE_CAUSES) +
              f", and the remainder `{UNEXPLAINED}`.", "",
              "| cause | groups (what held the launch back, or the reason seen) |", "|---|---|"]
    lines += [f"| `{c}` | {', '.join(f'`{g}`' for g in gs)} |" for c, gs in IDLE_GROUPS.items()]
    lines += ["",
              "### Slice args", ""] + keys(SLICE_ARGS) + ["", "### otherData", ""] + keys(OTHER_DATA)
    return "\n".join(lines) + "\n"


def is_deployment(other_data: dict[str, Any] | None) -> bool:
    """Whether a trace is `tracegen deploy`'s request-level timeline (not for replay's analyses)."""
    return (other_data or {}).get("format") == DEPLOY_FORMAT


def is_generated(other_data: dict[str, Any] | None) -> bool:
    """Whether a trace's otherData says tracegen wrote it."""
    return str((other_data or {}).get("generator", "")).startswith(GENERATOR)


__all__ = ["KINETO_LEGACY_CATS", "FORMAT_VERSION", "GENERATOR", "DEPLOY_FORMAT", "is_deployment", "COMPUTE", "COMM", "CPU", "PROXY", "TRACKS", "CAT_LAUNCH", "CAT_WAIT",
           "CAT_PROXY", "GPU_CATS", "FLOW_DEPENDENCY", "FLOW_LAUNCH", "LAUNCH_FLOWS", "STAGE_STREAM", "PROGRAM",
           "IDLE_CAUSES", "WAITING_ON_PEER", "STEP_BOUNDARY", "WAITING_ON_COPY", "KERNEL_SWITCH", "OBSERVED_IDLE_CAUSES", "UNEXPLAINED", "IDLE_GROUPS", "RUNTIME_CATS", "Key", "SLICE_ARGS", "OTHER_DATA", "read_keys", "is_generated", "markdown"]


if __name__ == "__main__":      # python -m tracegen.base.contract > the tables of docs/trace-contract.md
    print(markdown(), end="")
