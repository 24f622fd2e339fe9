"""Every --json output follows its versioned schema (tracegen/schemas.py, replay/schemas.py),
strictly: no unknown key, counts as integers, lists as lists, `schema` = "<name>/<version>";
docs/schemas/ holds the current JSON Schema of each."""
from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from replay.cli import main as replay
from replay.schemas import SCHEMAS as REPLAY
from tracegen.cli import main as tracegen
from tracegen.schemas import SCHEMAS as TRACEGEN

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "traces" / "golden"
OBS = ROOT / "traces" / "observed" / "h100"
ALL = {**TRACEGEN, **REPLAY}


def _run(capsys, main, argv) -> dict:
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def _check(out: dict, name: str) -> None:
    struct, version = ALL[name]
    assert out["schema"] == f"{name}/{version}"
    msgspec.convert(out, struct, strict=True)


@pytest.fixture(scope="module")
def trace_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("schemas")


CASES = [
    ("tracegen-estimate", tracegen, ["estimate", "--json"]),
    ("tracegen-estimate", tracegen, ["estimate", "--phase", "decode", "--json"]),
    ("tracegen-trace", tracegen, ["trace", "--layers", "5", "--ranks", "2", "--json", "-o", "{dir}/t.json"]),
    ("tracegen-list-hardware", tracegen, ["list", "hardware", "--json"]),
    ("tracegen-list-models", tracegen, ["list", "models", "--json"]),
    ("tracegen-list-presets", tracegen, ["list", "presets", "--json"]),
    ("tracegen-roofline", tracegen, ["roofline", "--json"]),
    ("tracegen-deploy", tracegen, ["deploy", "--requests", "200", "--output-len", "20", "--slo-ttft", "2000",
                                   "--slo-tpot", "50", "--json", "-o", "{dir}/d.json.gz"]),
    ("tracegen-deploy", tracegen, ["deploy", "--mode", "decode", "--requests", "100", "--output-len", "5", "--json"]),
    ("tracegen-deploy-search", tracegen, ["deploy", "--search", "--nodes", "6", "--slo-ttft", "3000",
                                          "--slo-tpot", "60", "--requests", "300", "--output-len", "50", "--json"]),
    ("replay-analyze", replay, ["analyze", str(GOLDEN / "h800-decode-ibgda.json.gz"), "--json", "--no-cache"]),
    ("replay-analyze", replay, ["analyze", str(OBS / "layers-improper.json.gz"), "--json", "--no-cache",
                                "--taxonomy", str(OBS / "taxonomy.toml"), "--window", "2ms:30ms"]),
    ("replay-compare", replay, ["compare", str(GOLDEN / "h800-decode-ibgda.json.gz"),
                                str(GOLDEN / "h800-decode-cpu-proxy.json.gz"), "--json", "--no-cache"]),
    ("replay-whatif", replay, ["whatif", str(GOLDEN / "h800-prefill-improper.json.gz"), "--launch-order", "proper",
                               "--json", "--no-cache", "-o", "{dir}/w.json"]),
    ("replay-calibrate", replay, ["calibrate", str(GOLDEN / "h800-prefill-proper.json.gz"), "--json",
                                  "-o", "{dir}/fit.json"]),
    ("replay-sql", replay, ["sql", str(GOLDEN / "h800-decode-ibgda.json.gz"), "SELECT layer, sum(dur_us) AS us "
                            "FROM kernels GROUP BY layer ORDER BY layer", "--json", "--no-cache"]),
    ("replay-diff", replay, ["diff", str(OBS / "layers-improper.json.gz"), str(OBS / "layers-proper.json.gz"),
                             "--taxonomy", str(OBS / "taxonomy.toml"), "--json", "--no-cache"]),
]


@pytest.mark.parametrize("name,main,argv", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_json_output_follows_its_schema(capsys, trace_dir, name, main, argv):
    out = _run(capsys, main, [a.replace("{dir}", str(trace_dir)) for a in argv])
    _check(out, name)


def test_every_schema_is_exercised():
    assert {c[0] for c in CASES} == set(ALL)


def test_one_time_base_and_lists(capsys):
    """Layer and finding start times both count from t0_us; stages are a list without empty names."""
    out = _run(capsys, replay, ["analyze", str(GOLDEN / "h800-prefill-improper.json.gz"), "--json", "--no-cache"])
    span = max(r["span_us"] for r in out["ranks"])
    for r in out["ranks"]:
        for lay in r["layers"]:
            assert 0 <= lay["start_us"] <= span and lay["stages"] and all(lay["stages"])
    assert all(0 <= f["start_us"] <= span for f in out["findings"])


def test_the_docs_hold_the_current_schemas():
    from .contract_doc import SCHEMA_DIR, schema_files
    for name, text in schema_files().items():
        path = SCHEMA_DIR / f"{name}.schema.json"
        assert path.exists() and path.read_text() == text, f"{path} is stale: run `make docs`"


def test_the_readme_names_the_current_analyze_schema():
    """The README's example of the schema key is the version replay writes today (it said /2 at /4)."""
    from pathlib import Path
    from replay.schemas import SCHEMAS
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f'"schema": "replay-analyze/{SCHEMAS["replay-analyze"][1]}"' in readme
