"""eval --by COLUMN: the headline per value of a pair's (or its traces') metadata column."""

import json
from collections import Counter

import numpy as np
import pytest
from conftest import ok, run, write_jsonl

from orm_cache.config import DataSpec
from orm_cache.evaluate import format_report
from orm_cache.evaluate import metrics as M
from orm_cache.evaluate.by import MISSING, value_label
from orm_cache.head import Head
from orm_cache.pipeline.evaluate import evaluate_split
from orm_cache.pipeline.bind import load_vectors, store_for_head

KINDS = ("easy", "hard", "easy", None, "absent")  # per row, cycling; "absent": the row has no column


def pairwise_rows(n, offset=0):
    rows = []
    for i in range(offset, offset + n):
        r = {"chosen": f"Step 1: {i} + {i} = {2 * i}. Answer: {2 * i}",
             "rejected": f"Step 1: {i} + {i} = {2 * i + (i % 3) + 1}. Answer: {2 * i + (i % 3) + 1}",
             "group": f"q{i // 3}", "id": i, "tags": ["x", i % 2], "one": "same"}
        if KINDS[i % 5] != "absent":
            r["kind"] = KINDS[i % 5]
        rows.append(r)
    return rows


# A hand-made pointwise split: (group, text, label, source); "-" = no source key, None = null.
POINTWISE = [
    ("p0", "gt", 1, "ground_truth"), ("p0", "a", 1, "6b"), ("p0", "b", 0, "6b"), ("p0", "c", 0, "175b"),
    ("p1", "gt", 1, "ground_truth"), ("p1", "b", 0, "6b"), ("p1", "c", 0, None), ("p1", "d", 0, "175b"),
    ("p2", "gt", 1, "ground_truth"), ("p2", "a", 1, "175b"), ("p2", "b", 0, "6b"), ("p2", "e", 0, "-"),
]
# every positive meets every negative of its group (at most 3 < 4 negatives per positive)
EXPECTED_PAIRS = {
    "chosen=ground_truth / rejected=6b": 3, "chosen=ground_truth / rejected=175b": 2,
    f"chosen=ground_truth / rejected={MISSING}": 2, "chosen=6b / rejected=6b": 1, "chosen=6b / rejected=175b": 1,
    "chosen=175b / rejected=6b": 1, f"chosen=175b / rejected={MISSING}": 1,
}


def pointwise_file_rows():
    rows = []
    for g, name, label, source in POINTWISE:
        r = {"text": f"Problem {g}, solution {name}: {len(name) * 7 + int(g[1:])} so the answer is {label}.",
             "label": label, "group": g}
        if source != "-":
            r["source"] = source
        rows.append(r)
    return rows


@pytest.fixture(scope="module")
def setup(tiny_opt_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evalby")
    pw, pt, cache, head = tmp / "pairs", tmp / "points", tmp / "c", tmp / "h.pt"
    write_jsonl(pw / "train.jsonl", pairwise_rows(40))
    write_jsonl(pw / "test.jsonl", pairwise_rows(30, offset=40))
    write_jsonl(pt / "test.jsonl", pointwise_file_rows())
    for data, split in ((pw, "train"), (pw, "test"), (pt, "test")):
        ok("embed", "--data", data, "--split", split, "--model", tiny_opt_dir, "--cache-dir", cache, "-q")
    ok("fit-head", "--data", pw, "--model", tiny_opt_dir, "--cache-dir", cache, "--out", head,
       "--solver", "lbfgs", "--l2", "10", "--eval-split", "", "-q")
    return pw, pt, cache, head


def direct_margins(head_path, data, split, cache):
    """Scores straight from the head and the store: (margins per pair, SplitVectors)."""
    head = Head.load(head_path)
    sv = load_vectors(DataSpec(data=str(data), split=split, keep_columns=("source",) if "points" in str(data) else ()),
                      store_for_head(head, cache), head.feature, cache)
    s = head.score(sv.X)
    return s[sv.ci] - s[sv.ri], sv, s


def test_pairwise_by_column_equals_direct_computation(setup, tmp_path):
    pw, _, cache, head = setup
    out = tmp_path / "m.json"
    r = ok("eval", "--head", head, "--data", pw, "--split", "test", "--cache-dir", cache, "--calibrate-on", "",
           "--bootstrap", 200, "--by", "kind", "--by", "one", "--json", out)
    text = out.read_text()
    m = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    margins, _, _ = direct_margins(head, pw, "test", cache)
    rows = pairwise_rows(30, offset=40)  # pair i is row i (pairwise rows, nothing dropped)
    kinds = np.array([value_label(r.get("kind")) for r in rows])
    groups = np.array([r["group"] for r in rows], dtype=object)
    got = m["by"]["kind"]["pairs"]
    assert [g["value"] for g in got] == ["(missing)", "easy", "hard"]  # 12 (6 null + 6 absent) / 12 / 6; ties by name
    assert 0 < m["accuracy"] < 1, "the test wants both right and wrong pairs"
    for g in got:
        sel = kinds == g["value"]
        assert g["pairs"] == sel.sum()
        assert g["accuracy"] == pytest.approx((margins[sel] > 0).mean())
        assert g["tie_rate"] == pytest.approx((margins[sel] == 0).mean())
        assert g["margin_mean"] == pytest.approx(margins[sel].mean(), abs=1e-6)
        correct = margins[sel] > 0
        if 0 < correct.mean() < 1:
            assert g["ci"] == M.bootstrap_ci(correct, groups[sel], 200, 0.9, 0)  # problems resampled, as the headline
        else:
            assert g["ci"]["low"] == g["ci"]["high"] == correct.mean()
        assert g["ci"]["unit"] == "group"
    # a column with one value reproduces the headline, CI included
    (whole,) = m["by"]["one"]["pairs"]
    assert whole["value"] == "same" and whole["pairs"] == m["pairs"] and whole["accuracy"] == m["accuracy"]
    assert whole["ci"] == m["ci"]
    assert "by kind (pairs" in r.output and "by one (pairs" in r.output
    line = next(x for x in r.output.splitlines() if x.strip().startswith("easy"))
    assert f"{100 * got[1]['accuracy']:5.1f}%" in line and " 12 " in line


def test_pointwise_chosen_rejected_combinations(setup, tmp_path):
    _, pt, cache, head = setup
    out = tmp_path / "m.json"
    r = ok("eval", "--head", head, "--data", pt, "--split", "test", "--cache-dir", cache, "--calibrate-on", "",
           "--bootstrap", 100, "--by", "source", "--json", out)
    m = json.loads(out.read_text())
    b = m["by"]["source"]
    assert {g["value"]: g["pairs"] for g in b["pairs"]} == EXPECTED_PAIRS
    assert [g["pairs"] for g in b["pairs"]] == sorted(EXPECTED_PAIRS.values(), reverse=True)
    assert sum(EXPECTED_PAIRS.values()) == m["pairs"]
    assert all(g["value"] == f"chosen={g['chosen']} / rejected={g['rejected']}" for g in b["pairs"])

    margins, sv, scores = direct_margins(head, pt, "test", cache)
    data = sv.data
    src = [value_label(v) for v in data.trace_meta["source"]]
    combo = np.array([f"chosen={src[x['chosen_row']]} / rejected={src[x['rejected_row']]}" for x in data.pairs.meta])
    for g in b["pairs"]:
        assert g["accuracy"] == pytest.approx((margins[combo == g["value"]] > 0).mean())
    # per trace value: counts and AUROC (None where one label only)
    traces = {g["value"]: g for g in b["traces"]}
    assert {v: (g["traces"], g["correct"]) for v, g in traces.items()} == {
        "ground_truth": (3, 3), "6b": (4, 1), "175b": (3, 1), MISSING: (2, 0)}
    assert traces["ground_truth"]["auroc"] is None and traces[MISSING]["auroc"] is None
    row_scores = scores[sv.rows(data.keys)]
    from sklearn.metrics import roc_auc_score

    sel = np.array(src) == "6b"
    assert traces["6b"]["auroc"] == pytest.approx(roc_auc_score(data.labels[sel], row_scores[sel]))
    assert "chosen=ground_truth / rejected=6b" in r.output and "by source (traces)" in r.output


def test_unknown_column_is_one_line_listing_the_columns(setup):
    pw, pt, cache, head = setup
    r = run("eval", "--head", head, "--data", pw, "--split", "test", "--cache-dir", cache, "--by", "knd", "-q")
    assert r.exit_code != 0
    msg = r.output.strip()
    assert msg.count("\n") == 0 and "'knd'" in msg and "id, tags, one, kind" in msg, msg
    r = run("eval", "--head", head, "--data", pt, "--split", "test", "--cache-dir", cache, "--by", "label", "-q")
    assert r.exit_code != 0 and r.output.strip().count("\n") == 0 and "source" in r.output, r.output


def test_python_api_and_the_printed_cap(setup):
    pw, pt, cache, head = setup
    rep = evaluate_split(head, DataSpec(data=str(pw), split="test"), cache, calibrate_on=None, bootstrap=50,
                         by=["id", "tags"])
    ids = rep["by"]["id"]["pairs"]
    assert len(ids) == 30 and all(g["pairs"] == 1 for g in ids)  # the JSON has every value
    assert [g["value"] for g in rep["by"]["tags"]["pairs"]] == ['["x",0]', '["x",1]']
    text = format_report(rep, max_groups=5)
    assert "… 25 more values (25 pairs), all in --json" in text
    assert sum(1 for x in text.splitlines() if x.startswith("    ") and x.split()[0].isdigit()) == 5
    rep = evaluate_split(head, DataSpec(data=str(pt), split="test"), cache, calibrate_on=None, bootstrap=50,
                         by="source")
    assert "traces" in rep["by"]["source"]


def test_value_labels():
    assert value_label(None) == value_label(float("nan")) == MISSING
    assert value_label("a b") == "a b" and value_label(3) == "3" and value_label(np.int64(3)) == "3"
    assert value_label(True) == value_label(np.bool_(True)) == "true" and value_label(2.5) == "2.5"
    assert value_label({"b": 1, "a": [1, "x"]}) == '{"a":[1,"x"],"b":1}'
    assert value_label(np.array([1, 2])) == "[1,2]"


def test_pairwise_by_metric_is_pure_and_sorted():
    margins = np.array([1.0, -1.0, 0.0, 2.0, 3.0, -0.5])
    got = M.pairwise_by(margins, ["a", "b", "b", "b", "a", "c"], n_boot=100)
    assert [(g["value"], g["pairs"]) for g in got] == [("b", 3), ("a", 2), ("c", 1)]
    b = got[0]
    assert b["accuracy"] == pytest.approx(1 / 3) and b["tie_rate"] == pytest.approx(1 / 3)
    assert b["margin_mean"] == pytest.approx(1 / 3) and b["ci"] == M.bootstrap_ci([0, 0, 1], None, 100)
    assert got[1]["ci"]["low"] == got[1]["ci"]["high"] == 1.0 and got[2]["ci"]["high"] == 0.0
    assert M.pairwise_by(margins, list("abcdef"), max_ci=2)[2]["ci"] is None
    assert Counter(g["value"] for g in M.pointwise_by([1, 2, 3], [0, 1, 1], ["x", "x", "y"])) == {"x": 1, "y": 1}
