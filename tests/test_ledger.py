"""The fit ledger (tracegen/ledger.py): every catalog constant names its basis and datasets, and every
validation row claims a label no weaker than the constants it runs on force (issue 28)."""
from __future__ import annotations

import pytest

from bench.labels import Claim, pinned
from tracegen.base.errors import UserError
from tracegen.ledger import BASES, datasets, entries, parse_source, required_label


def test_every_catalog_source_names_its_basis_and_known_datasets():
    es = entries()
    assert len(es) >= 60
    assert {e.basis for e in es} <= set(BASES)
    for e in es:
        if e.basis in ("fitted", "measured", "published"):
            assert e.datasets, e.path                        # a fit names what it was fitted on
    fitted = {e.path: e.datasets for e in es if e.basis == "fitted"}
    assert fitted["hopper.in_situ"] == ("deepep-h100x4",)
    assert fitted["h100.comm.intranode"] == ("deepep-h100x4",)
    assert fitted["ascend-910c.efficiency.attention_decode"] == ("jiusi-slides",)


def test_the_registry_is_closed():
    reg = datasets()
    for key, d in reg.items():
        assert d.get("title") and d.get("where"), key
        assert set(d.get("related", ())) <= set(reg), key


@pytest.mark.parametrize("text", ["DeepEP README, H800", "fitted, H100 sweep", "fitted [no-such-set]: x",
                                  "assumed []: no range given"])
def test_a_source_without_basis_datasets_or_range_is_refused(text):
    with pytest.raises(UserError):
        parse_source("h100.efficiency.gemm", text)


def test_a_row_on_the_data_a_constant_was_fitted_on_must_be_in_sample():
    c = Claim("deepep-h100x4", "semi-independent", "h100", "intranode")
    ok, need, why = c.check()
    assert not ok and need == "in-sample" and "deepep-h100x4" in why
    assert Claim("deepep-h100x4", "in-sample", "h100", "intranode").check()[0]
    # a related dataset's constant (InferSim's H20 kernels) makes its SGLang rows semi-independent at best
    assert required_label("infersim-qwen3-h20", Claim("infersim-qwen3-h20", "held-out", "h20").deps(),
                          pinned=True)[0] == "semi-independent"


def test_held_out_means_pinned_before_predicting():
    c = Claim("ant-h20-2025-09", "held-out", "h20", "intranode", model="deepseek-v3")
    assert not c.check()[0]                               # not pinned: at best semi-independent
    assert Claim("ant-h20-2025-09", "held-out", "h20", "intranode", heldout_key="ant-h20-deepseek-prefill").check()[0]
    assert "ant-h20-deepseek-prefill" in pinned()


def _all_claims() -> list[tuple[str, Claim]]:
    from bench import validate, validate_deploy
    out = [(f"throughput {r.key}", r.claim()) for r in validate.ROWS]
    out += [(f"table {k}", c) for k, c in validate.TABLE_CLAIMS.items()]
    out += [(f"deploy {r.key}", r.claim()) for r in validate_deploy.ROWS]
    return out


def test_every_validation_row_claims_at_least_what_its_constants_force():
    for name, c in _all_claims():
        ok, need, why = c.check()
        assert ok, f"{name}: labelled {c.label}, must be at least {need} ({why})"


def test_each_datum_is_counted_once():
    """A deploy row that checks a figure another table checks names that row; no two rows share a key."""
    from bench import ascend, validate, validate_deploy
    keys = [r.key for r in validate.ROWS] + [r.key for r in ascend.STEP_ROWS]
    assert len(keys) == len(set(keys))
    for r in validate_deploy.ROWS:
        if r.datum:
            assert r.datum in keys, r.key


def test_held_out_rows_are_reported_with_their_labels():
    from bench.heldout import rows, summary
    rs = rows()
    assert {r["key"] for r in rs} == set(pinned())
    for r in rs:
        assert r["label"] in ("held-out", "semi-independent")
        assert r["predicted"] > 0
        if r["published"] is None:        # pinned before its capture: no target yet, so no error
            assert r["error_pct"] is None and "truth_file" in pinned()[r["key"]]
            continue
        assert r["error_pct"] == pytest.approx(100 * (r["predicted"] / r["published"] - 1))
        pin = pinned()[r["key"]].get("predicted_at_pin")
        if pin is not None:               # the prediction written down before the target existed is reported
            assert r["error_at_pin_pct"] == pytest.approx(100 * (pin / r["published"] - 1))
        if "truth_file" in pinned()[r["key"]]:
            assert pin is not None, f"{r['key']}: a row pinned before its capture records its prediction"
        if abs(r["error_pct"]) > 10:
            assert r["reason"], f"{r['key']}: a miss needs its reason"
    s = summary(rs)
    assert s["max_abs_pct"] >= s["median_abs_pct"] >= 0
