"""Structure from the annotation styles people use, on real captures (traces/observed/h200 style-*,
bench/capture/capture_h200.py) whose truth - layers per step, steps, micro-batches - is what the
capture ran (capture.json), and from the kernel sequence where nothing is annotated."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from replay.analyze import analyze

ROOT = Path(__file__).resolve().parents[1]
H200 = ROOT / "traces" / "observed" / "h200"
STANDIN = str(ROOT / "traces" / "observed" / "h100" / "taxonomy.toml")     # host copies = the all-to-all
CAPTURE = json.loads((H200 / "capture.json").read_text())
STYLES = [r for r in CAPTURE["runs"] if r.get("style")]


def recovered(a) -> tuple[dict[int, int], set[int]]:
    """Layers per step and the micro-batches of the recovered GPU work."""
    per = a.layers.groupby("step")["layer"].nunique().to_dict() if len(a.layers) else {}
    g = a.events[(a.events["device"] == "gpu") & (a.events["layer"] >= 0) & (a.events["klass"] != "compute")]
    mbs = set(int(x) for x in a.events.loc[(a.events["device"] == "gpu") & (a.events["layer"] >= 0),
                                           "microbatch"].unique() if x >= 0)
    return per, mbs | set(int(x) for x in g["microbatch"].unique() if x >= 0)


@pytest.mark.parametrize("run", STYLES, ids=lambda r: r["style"])
@pytest.mark.parametrize("taxonomy", [None, STANDIN], ids=["plain", "stand-in comm"])
def test_each_style_gives_the_layers_steps_and_microbatches_it_ran(run, taxonomy):
    a = analyze(H200 / run["file"], use_cache=False, progress=False, taxonomy=taxonomy)
    per, mbs = recovered(a)
    assert len(per) == run["steps"], (a.structure, per)
    assert set(per.values()) == {run["layers_per_step"]}, (a.structure, per)
    assert sorted(per) == sorted(set(a.steps["step"])) if len(a.steps) else True
    named = run["style"] != "none"
    if named:
        assert a.structure.startswith("annotations"), a.structure
    if named or taxonomy:         # micro-batches come from names, or from the all-to-all sequence
        assert mbs == set(range(run["microbatches"])), (a.structure, mbs)
    # a layer never straddles steps, and every layer computes
    assert (a.layers["compute_us"] > 0).all()


@pytest.mark.parametrize("name,layers", [("decode-eager.json.gz", 12), ("decode-graph.json.gz", 12),
                                         ("decode-item.json.gz", 12), ("prefill-pause.json.gz", 6)])
def test_layers_from_the_kernel_sequence_or_layer_ranges(name, layers):
    a = analyze(H200 / name, use_cache=False, progress=False)
    per = a.layers.groupby("step")["layer"].nunique().to_dict()
    assert set(per.values()) == {layers} and len(per) == 3, (a.structure, per)


def test_steps_from_a_step_like_range_without_profilerstep():
    """style-slash has no ProfilerStep: its `forward_step` ranges are the steps (data/annotations.toml)."""
    a = analyze(H200 / "style-slash.json.gz", use_cache=False, progress=False)
    assert sorted(set(a.steps["step"])) == [0, 1]


def test_stage_query_finds_the_expert_stage():
    """The README's skew query reads `stage LIKE 'MLP%'`: named styles label their expert stage MLP."""
    for style in ("slash", "mbn", "sglang", "module"):
        a = analyze(H200 / f"style-{style}.json.gz", use_cache=False, progress=False)
        stages = set(a.events.loc[(a.events["device"] == "gpu") & (a.events["layer"] >= 0), "stage"].astype(str))
        assert any(s.startswith("MLP") for s in stages), (style, stages)
        assert any(s.startswith("ATTN") for s in stages), (style, stages)


@pytest.mark.parametrize("run", ["prefill-proper", "prefill-skew", "decode-proper"])
def test_expert_compute_and_balancedness_on_real_folders(run):
    """The DeepEP captures' experts (per-expert FP8 GEMMs inside the MLP stage ranges) are routed-expert
    compute; balancedness is filled, and the skewed run's heavy rank is the one with the most."""
    a = analyze(ROOT / "traces" / "observed" / "deepep-h100x4" / run, use_cache=False, progress=False)
    moe = {r["rank"]: r["moe_compute_us"] for r in a.ranks}
    assert all(v > 0 for v in moe.values()) and a.to_dict()["balancedness"] is not None
    if run == "prefill-skew":
        assert max(moe, key=moe.get) == 2 and a.to_dict()["balancedness"] < 0.6


def test_annotation_names_matched_once_per_name_equal_the_per_row_match():
    """structure._extract runs the annotation regex once per distinct name of a categorical column: the
    same frame (values, dtypes, index) as astype(str).str.extract, with missing names and unused categories."""
    import re

    import numpy as np
    import pandas as pd

    from replay.structure import DEFAULT_ANNOTATION, _extract
    rx = re.compile(DEFAULT_ANNOTATION)
    rng = np.random.default_rng(0)
    pool = ["L3:ATTN(0)", "L12/MLP(1)", "DISPATCH(0)", "ProfilerStep#1", "x", "L0:COMBINE(B)", "nan"]
    for _ in range(100):
        vals = rng.choice(pool + [None], size=int(rng.integers(1, 60)))
        col = pd.Series(pd.Categorical(vals, categories=sorted(set(pool) | {"unused(1)"})),
                        index=rng.permutation(len(vals)) + 5)
        pd.testing.assert_frame_equal(_extract(col, rx), col.astype(str).str.extract(rx))


HF = ROOT / "traces" / "observed" / "hf-moe-h100"
HF_CAPTURE = json.loads((HF / "hf-moe-capture.json").read_text())


@pytest.mark.parametrize("variant", sorted(HF_CAPTURE["runs"]))
def test_hugging_face_style_moe_layers_per_step(variant):
    """A Qwen2-MoE-style eager forward (bench/capture/capture_hf_moe.py, H100), captured before replay ran on
    it: with nn.Module ranges, and with none - where the per-expert GEMMs' kernel names change from layer
    to layer with the tokens each expert got, so the sequence repeats only with GEMMs taken as one op."""
    run = HF_CAPTURE["runs"][variant]
    a = analyze(HF / f"hf-moe-{variant}.json.gz", use_cache=False, progress=False)
    per = a.layers.groupby("step")["layer"].nunique().to_dict()
    assert len(per) == run["steps"] and set(per.values()) == {run["layers_per_step"]}, (a.structure, per)
    assert a.structure == ("annotations (nn.Module)" if variant == "module" else "kernel-period")
    # every layer computes the same work: its compute within 3 % of the median layer's
    c = a.layers["compute_us"]
    assert ((c - c.median()).abs() < 0.03 * c.median()).all()
    # one torch.where per expert waits for the GPU: the CPU blocked in syncs, 16 per layer
    sync = [f for f in a.findings if f["kind"] == "cpu_blocked_launch" and f["blocked_by"] == "sync"]
    assert len(sync) >= run["host_syncs_per_layer"] * run["layers_per_step"] * run["steps"] * 0.9


def test_a_sequence_that_repeats_nowhere_says_so():
    a = analyze(ROOT / "traces" / "observed" / "rules-h100" / "train-threads.json.gz", use_cache=False, progress=False)
    assert a.structure.startswith("none (") and "rank-level figures only" in a.structure and a.layers.empty


@pytest.mark.parametrize("name,layer,stage", [
    ("nn.Module: Qwen3MoeDecoderLayer_3", "3", None),        # "Moe" is the family's name, not a stage
    ("nn.Module: Qwen3MoeModel_0", None, None),
    ("nn.Module: Qwen3MoeAttention_3", None, "Qwen3MoeAttention"),
    ("nn.Module: Qwen3MoeSparseMoeBlock_3", None, "Qwen3MoeSparseMoeBlock"),   # an MoE block: a stage, not a layer
    ("nn.Module: MixtralSparseMoeBlock_2", None, "MixtralSparseMoeBlock"),
    ("nn.Module: DeepseekV2MoE_7", None, "DeepseekV2MoE"),
    ("nn.Module: LlamaFlashAttention2_1", None, "LlamaFlashAttention2"),
    ("nn.Module: GPT2Block_5", "5", None),
    ("nn.Module: LlamaDecoderLayer_11", "11", None),
    ("nn.Module: TransformerLayer_4", "4", None),             # Megatron-core
    ("nn.Module: MoELayer_1", None, "MoELayer"),              # Megatron-core's MoE block: counts MoE layers only
    ("nn.Module: MOELayer_1", None, "MOELayer"),              # DeepSpeed-MoE
    ("nn.Module: MixtralBlockSparseTop2MLP_5", None, "MixtralBlockSparseTop2MLP"),
    ("nn.Module: Llama4TextMoe_2", None, "Llama4TextMoe"),
    ("nn.Module: MoEGate_0", None, None),
])
def test_module_class_names_give_a_layer_or_a_stage_by_their_ending(name, layer, stage):
    """The nn.Module style (replay/data/annotations.toml) reads a class's role from the end of its name."""
    from replay.structure import styles
    style = next(s for s in styles() if s.name == "nn.Module")
    got = {}
    for rx in style.ranges:
        m = rx.fullmatch(name)
        if m:
            got.update({k: v for k, v in m.groupdict().items() if v is not None})
    assert got.get("layer") == layer and got.get("stage") == stage, got


@pytest.mark.parametrize("name,style,layer,stage", [
    ("model.layers.3.mlp.experts", "layer/stage", "3", "mlp"),          # a module's path: the part after the index
    ("decoder.layers.12.self_attention", "layer/stage", "12", "self_attention"),
    ("layers.3/attn", "layer/stage", "3", "attn"),
    ("layer3:MoE", "layer/stage", "3", "MoE"),
    ("decoder.layers.7", "layer", "7", None),
    ("model.layers.3", "layer", "3", None),
    ("aten::layer_norm", "layer", None, None),
    ("LayerNorm_3", "layer", None, None),
])
def test_range_names_by_module_path(name, style, layer, stage):
    from replay.structure import styles
    st = next(s for s in styles() if s.name == style)
    m = next((rx.fullmatch(name) for rx in st.ranges if rx.fullmatch(name)), None)
    got = {k: v for k, v in (m.groupdict() if m else {}).items() if v is not None}
    assert got.get("layer") == layer and got.get("stage") == stage, got


def test_feed_forward_modules_are_the_mlp_stage():
    from replay.stagerules import stage_of
    assert stage_of("LlamaFeedForward") == stage_of("feed_forward") == stage_of("ffn") == "MLP"


# the nn.Module capture with its classes renamed as other frameworks name them (names only: the same ranges,
# times and kernels), so the rule "a class's role is the end of its name" is checked on a real trace
RENAMES = {
    "qwen3-moe (HF / vLLM)": {"DeepseekV2DecoderLayer": "Qwen3MoeDecoderLayer", "DeepseekV2MLAAttention": "Qwen3MoeAttention",
                              "DeepseekV2MoE": "Qwen3MoeSparseMoeBlock", "DeepseekV2Model": "Qwen3MoeModel"},
    "megatron-core": {"DeepseekV2DecoderLayer": "TransformerLayer", "DeepseekV2MLAAttention": "MLASelfAttention",
                      "DeepseekV2MoE": "MoELayer", "DeepseekV2Model": "GPTModel"},
    "mixtral (HF)": {"DeepseekV2DecoderLayer": "MixtralDecoderLayer", "DeepseekV2MLAAttention": "MixtralAttention",
                     "DeepseekV2MoE": "MixtralSparseMoeBlock", "DeepseekV2Model": "MixtralModel"},
}


@pytest.mark.parametrize("framework", sorted(RENAMES))
def test_module_ranges_as_other_frameworks_name_them(tmp_path, framework):
    import gzip
    run = next(r for r in STYLES if r["style"] == "module")
    d = json.loads(gzip.open(H200 / run["file"]).read())
    for e in d["traceEvents"]:
        name = e.get("name", "")
        if e.get("cat") == "python_function" and name.startswith("nn.Module: "):
            cls, inst = name[len("nn.Module: "):].rsplit("_", 1)
            e["name"] = f"nn.Module: {RENAMES[framework].get(cls, cls)}_{inst}"
    path = tmp_path / "renamed.json"
    path.write_text(json.dumps(d))
    a = analyze(path, use_cache=False, progress=False)
    per = a.layers.groupby("step")["layer"].nunique().to_dict()
    assert a.structure == "annotations (nn.Module)" and len(per) == run["steps"], (a.structure, per)
    assert set(per.values()) == {run["layers_per_step"]}
    # each layer begins with its attention half (its first norm runs beside ATTN): a class name read as a stage
    # by its "Moe" (Qwen3MoeDecoderLayer) put that norm in MLP, launched before ATTN - whatif then re-timed it so
    from replay.compare import label_stages
    from replay.stagerules import load_stage_rules
    g = label_stages(a, load_stage_rules()).sort_values("start_us")
    first = g.groupby(["step", "layer"])["cstage"].first()
    assert set(first) == {"ATTN"} and {"ATTN", "MLP"} <= set(g["cstage"]), first.value_counts().to_dict()


def test_the_period_search_is_the_exact_one_and_stays_fast_on_long_sequences():
    """_period_layers judges each candidate period on a fixed sample of positions first (a long sequence
    with no short period cost n operations per candidate: 1M kernels without steps took minutes). The
    answer is the exhaustive search's: checked here against a plain reference on sequences with and
    without periods, noisy ones included (its speed: the note of the commit that added it)."""
    import numpy as np

    from replay.structure import MIN_PERIOD_LAYERS, PERIOD_MATCH, _period_layers

    def reference(names):
        n = len(names)
        for p in range(2, n // MIN_PERIOD_LAYERS + 1):
            if np.mean(names[p:] == names[:-p]) < PERIOD_MATCH:
                continue
            o = next((i for i in range(n - 2 * p + 1) if np.array_equal(names[i:i + p], names[i + p:i + 2 * p])), None)
            if o is None or (n - o) // p < MIN_PERIOD_LAYERS:
                continue
            idx = np.arange(n)
            return np.where((idx >= o) & ((idx - o) // p < (n - o) // p), (idx - o) // p, -1)
        return None
    rng = np.random.default_rng(3)
    for n in (7, 60, 900, 9000, 12000):
        block = rng.integers(0, 30, max(2, n // 9))
        noisy = np.tile(block, 10)[:n].copy()
        flip = rng.random(n) < 0.04
        noisy[flip] = rng.integers(0, 30, int(flip.sum()))
        framed = np.concatenate([rng.integers(100, 200, 11), np.tile(block, 6), rng.integers(100, 200, 3)])
        for names in (rng.integers(0, 6, n), noisy, framed):
            want, got = reference(names), _period_layers(names)
            assert (want is None) == (got is None) and (want is None or np.array_equal(want, got)), n
    assert _period_layers(rng.integers(0, 50, 20_000)) is None     # past the sample's size: the sampled path


def test_one_kernel_repeated_is_no_evidence_of_layers():
    """h200x2-nccl's compute is one GEMM kernel, 14 times a step (all-reduces on a side stream): a period of
    two identical kernels made 7 'layers' a step before. A layer's block must hold two kinds of kernel."""
    a = analyze(ROOT / "traces" / "observed" / "h200x2-nccl", use_cache=False, progress=False)
    assert a.structure.startswith("none (") and a.layers.empty


def _steps_renamed(path: Path, names: list[str]) -> tuple[dict, Path]:
    """style-slash's two `forward_step` ranges renamed as an engine names its iterations, written to `path`."""
    import gzip
    import json
    doc = json.loads(gzip.open(H200 / "style-slash.json.gz", "rt").read())
    ranges = [e for e in doc["traceEvents"] if e.get("name") == "forward_step"]
    starts = sorted({float(e["ts"]) for e in ranges if e.get("cat") != "gpu_user_annotation"})
    assert len(starts) == len(names) == 2
    by_start = dict(zip(starts, names))
    for e in ranges:                     # a GPU-side copy takes the name of the CPU range it copies
        e["name"] = by_start[min(starts, key=lambda t: abs(t - float(e["ts"])))]
    path.write_text(json.dumps(doc))
    return doc, path


def test_steps_from_vllm_v1_iteration_ranges(tmp_path):
    """vLLM V1 names each engine iteration `execute_context_<reqs>(<tokens>)_generation_<reqs>(<tokens>)`
    (GPUWorker.annotate_profile) and writes no ProfilerStep: those ranges are the steps. style-slash's two
    `forward_step` ranges renamed so give the same two steps."""
    doc, path = _steps_renamed(tmp_path / "vllm-style.json", ["execute_context_1(4096)_generation_0(0)",
                                                              "execute_context_0(0)_generation_16(16)"])
    a = analyze(path, use_cache=False, progress=False)
    assert sorted(set(a.steps["step"])) == [0, 1]
    assert not any(e.get("name") == "forward_step" for e in doc["traceEvents"])
    from replay.steps import find_spans
    spans, rx = find_spans(a.events)         # the steps come from those ranges, not from the repetition
    assert "execute_context_" in rx and len(spans) == 2
    # and they say what each iteration ran (annotations.toml [phases]): the steps table, --json, the report
    got = a.steps.sort_values("step")[["phase", "prefill_requests", "prefill_tokens", "decode_requests",
                                       "decode_tokens"]].to_numpy().tolist()
    assert got == [["prefill", 1, 4096, 0, 0], ["decode", 0, 0, 16, 16]]
    import msgspec
    from replay.report import render
    from replay.schemas import SCHEMAS
    struct, version = SCHEMAS["replay-analyze"]
    doc = {**json.loads(json.dumps(a.to_dict(), default=float)), "schema": f"replay-analyze/{version}"}
    msgspec.convert(doc, struct, strict=True)
    assert [s_["phase"] for s_ in doc["ranks"][0]["steps"]] == ["prefill", "decode"]
    text = render(a).splitlines()
    rows = text[text.index(next(x for x in text if x.startswith("steps by phase"))) + 2:][:2]
    assert rows[0].split()[:2] == ["decode", "1"] and rows[1].split()[-2:] == ["4,096", "0"], rows
    from replay.sql import query           # SQL: the same columns, and on a trace without phases, NULL
    assert query(a, "SELECT phase, decode_tokens FROM steps ORDER BY step").values.tolist() == [["prefill", 0],
                                                                                              ["decode", 16]]
    plain = analyze(H200 / "style-slash.json.gz", use_cache=False, progress=False)
    assert query(plain, "SELECT count(*) FROM steps WHERE phase IS NULL AND decode_tokens IS NULL").iloc[0, 0] == 2


def test_steps_and_phases_from_sglang_step_spans(tmp_path):
    """SGLang names each forward `step[<ForwardMode> bs=<requests>...]` (utils/profile_utils.py
    build_step_span_name; EXTEND adds toks=<tokens>) and its /start_profile calls no prof.step(): those ranges
    are the steps, and they say each one's phase. style-slash's two `forward_step` ranges renamed so."""
    _, path = _steps_renamed(tmp_path / "sglang-steps.json", ["step[EXTEND bs=2 toks=8192]", "step[DECODE bs=16]"])
    a = analyze(path, use_cache=False, progress=False)
    from replay.steps import find_spans
    spans, rx = find_spans(a.events)
    assert "step\\[" in rx and len(spans) == 2 and sorted(set(a.steps["step"])) == [0, 1]
    got = a.steps.sort_values("step")[["phase", "prefill_requests", "prefill_tokens", "decode_requests"]]
    assert got.to_numpy().tolist() == [["prefill", 2, 8192, None], ["decode", None, None, 16]]
    import msgspec                       # the counts a step does not give are null, the others ints (the schema)
    from replay.schemas import SCHEMAS
    struct, version = SCHEMAS["replay-analyze"]
    out = {**json.loads(json.dumps(a.to_dict(), default=float)), "schema": f"replay-analyze/{version}"}
    msgspec.convert(out, struct, strict=True)
    assert [(x["phase"], x["prefill_tokens"]) for x in out["ranks"][0]["steps"]] == [("prefill", 8192), ("decode", None)]


@pytest.mark.parametrize("function", ["python/sglang/srt/managers/scheduler.py(1925): run_batch",
                                      "/opt/vllm/vllm/v1/worker/gpu_model_runner.py(1412): execute_model"])
def test_steps_from_an_engines_iteration_method_as_the_python_tracer_names_it(tmp_path, function):
    """SGLang's /start_profile records Python stacks and calls no prof.step(): its iterations are the
    Python tracer's `<file>(<line>): run_batch` ranges (vLLM's `...gpu_model_runner.py(<line>): execute_model`).
    Three iterations of two kernels each; the line number in the name is not a step number."""
    ev, corr = [], 0
    for i in range(3):
        t = 10_000.0 * i
        ev.append({"ph": "X", "cat": "python_function", "name": function, "pid": 1, "tid": 1, "ts": t, "dur": 5_000.0})
        for k in range(2):
            corr += 1
            ev.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 1,
                       "ts": t + 100 + 50 * k, "dur": 5.0, "args": {"correlation": corr}})
            ev.append({"ph": "X", "cat": "kernel", "name": "nvjet_sm90_tst_128x88_64x7_1x2_h_bz_TNT", "pid": 0,
                       "tid": 7, "ts": t + 200 + 300 * k, "dur": 250.0, "args": {"correlation": corr, "stream": 7}})
    path = tmp_path / "engine.json"
    path.write_text(json.dumps({"traceEvents": ev}))
    a = analyze(path, use_cache=False, progress=False)
    assert sorted(a.steps["step"]) == [0, 1, 2]
    assert (a.steps["compute_us"] == 500.0).all(), a.steps
