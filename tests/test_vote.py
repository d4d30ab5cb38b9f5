"""Answer-aware best-of-N: the pure functions against hand-made groups and a naive reference,
then every door (rank, eval, LiveScorer, the server) against those functions."""

from __future__ import annotations

import json
import math
import random
from fractions import Fraction

import numpy as np
import pytest

from orm_cache.errors import ConfigError, DataError
from orm_cache.evaluate import vote as V
from orm_cache.evaluate.metrics import best_of_n

from conftest import ok, run, write_jsonl, write_pointwise_splits


# -- the pure functions ------------------------------------------------------------------------

def test_the_three_aggregations_pick_different_answers_in_one_hand_made_group():
    # answer "7" has the single best candidate; "8" has the most candidates; "9" has two strong ones
    scores = [3.0, 0.0, 0.1, 0.2, 2.9, 2.8]
    answers = ["7", "8", "8", "8", "9", "9"]
    labels = [0, 0, 0, 0, 1, 1]
    best, vote, weighted = (V.pick(scores, answers, a) for a in V.AGGREGATES)
    assert (best.answer, vote.answer, weighted.answer) == ("7", "8", "9")
    assert vote.weight == 3 and vote.share == pytest.approx(3 / 6)
    w = np.exp(np.array(scores) - 3.0)
    assert weighted.weight == pytest.approx(w[4] + w[5]) and weighted.share == pytest.approx((w[4] + w[5]) / w.sum())
    assert best.weight == 1.0 and best.share == pytest.approx(1 / w.sum())
    # ranks: by the answer's weight, then score; the pick's best candidate is rank 1
    assert weighted.ranks.tolist() == [3, 6, 5, 4, 1, 2]
    assert vote.ranks.tolist() == [6, 3, 2, 1, 4, 5]  # "8" (3 votes), then "9" (2), then "7"
    assert [V.credit(p, labels, scores) for p in (best, vote, weighted)] == [0.0, 0.0, 1.0]


def test_temperature_flattens_the_weights_towards_the_plain_vote():
    scores, answers = [3.0, 0.0, 0.1, 0.2, 2.9, 2.8], ["7", "8", "8", "8", "9", "9"]
    assert V.pick(scores, answers, "weighted-vote", temperature=1.0).answer == "9"
    assert V.pick(scores, answers, "weighted-vote", temperature=100.0).answer == "8"  # ~equal weights: most votes
    assert V.pick(scores, answers, "weighted-vote", temperature=0.01).answer == "7"  # ~all weight on the top


def test_weights_never_overflow_and_shifting_every_score_changes_nothing():
    scores = np.array([1e6, 1e6 - 1, -1e6])
    p = V.pick(scores, ["a", "b", "b"], "weighted-vote")
    q = V.pick(scores - 5e5, ["a", "b", "b"], "weighted-vote")
    assert p.answer == q.answer == "a" and math.isfinite(p.share) and p.share == pytest.approx(q.share)


def test_tied_answers_share_the_credit_and_a_missing_answer_is_its_own():
    # two answers with two votes each: half credit; the unanswered candidates never pool together
    p = V.pick([0, 0, 0, 0, 5, 5, 5], ["1", "1", "2", "2", None, None, None], "vote")
    assert p.tied == 2 and set(p.winners) == {0, 1}
    assert V.credit(p, [1, 1, 0, 0, 0, 0, 0], [0] * 7) == 0.5
    # under weighted-vote the three strong unanswered candidates stay apart: each weighs 1, "1" weighs 2e^-5
    p = V.pick([0, 0, 5, 5, 5], ["1", "1", None, None, None], "weighted-vote")
    assert p.answer is None and p.tied == 3 and p.weight == 1.0


def _reference_credit(scores, answers, labels, aggregate, T):
    """Naive: exact rational weights where possible, dictionaries, no NumPy."""
    if aggregate == "best":
        top = max(scores)
        tied = [y for s, y in zip(scores, labels) if s == top]
        return sum(tied) / len(tied)
    mass, ys = {}, {}
    for i, (s, a, y) in enumerate(zip(scores, answers, labels)):
        key = a if a is not None else ("none", i)
        w = Fraction(1) if aggregate == "vote" else Fraction(math.exp((s - max(scores)) / T))
        mass[key] = mass.get(key, 0) + w
        ys.setdefault(key, []).append(y)
    top = max(mass.values())
    winners = [k for k, m in mass.items() if m == top]
    return sum(sum(ys[k]) / len(ys[k]) for k in winners) / len(winners)


@pytest.mark.parametrize("seed", range(5))
def test_best_of_n_answers_equals_a_naive_reference_on_random_groups(seed):
    rng = random.Random(seed)
    scores, answers, labels, groups = [], [], [], []
    for g in range(60):
        n = rng.randint(1, 8)
        truth = str(rng.randint(0, 3))
        for _ in range(n):
            a = rng.choice([str(rng.randint(0, 3)), None]) if rng.random() < 0.3 else str(rng.randint(0, 3))
            scores.append(round(rng.gauss(0, 1), 1))  # rounded: ties happen
            answers.append(a)
            labels.append(int(a == truth))
            groups.append(f"g{g}")
    T = rng.choice([None, 0.5, 2.0])
    got = V.best_of_n_answers(scores, labels, groups, answers, T)
    for agg in V.AGGREGATES:
        want = np.mean([_reference_credit([scores[i] for i in idx], [answers[i] for i in idx],
                                          [labels[i] for i in idx], agg, T or 1.0)
                        for idx in _groups(groups)])
        assert got[agg] == pytest.approx(want, abs=1e-12), agg
    plain = best_of_n(np.array(scores), np.array(labels), groups)  # the answer-free metric, unchanged
    assert got["best"] == pytest.approx(plain["accuracy"]) and got["random"] == pytest.approx(plain["random"])
    assert got["oracle"] == plain["oracle"] and got["groups"] == 60
    from orm_cache.evaluate.metrics import group_indices

    idx = group_indices(groups)  # the report's best-of-N, from the credits it has anyway, is the metric's
    summary = V.best_summary(V.group_credits(scores, labels, answers, idx, T, ("best",)), idx)
    assert summary.keys() == plain.keys() and all(summary[k] == pytest.approx(plain[k]) for k in plain
                                                  if k != "tie_policy")


def _groups(groups):
    out = {}
    for i, g in enumerate(groups):
        out.setdefault(g, []).append(i)
    return out.values()


@pytest.mark.parametrize("raw,norm", [("1,000", "1000"), ("$1000.00", "1000"), (1000, "1000"), (" 18. ", "18"),
                                      ("-0.0", "0"), ("7.50", "7.5"), ("50%", "50"), ("Paris", "Paris"),
                                      ("a  b\n c", "a b c"), ("", None), (None, None), (float("nan"), None),
                                      (True, "true"), ("1,2", "1,2"), ("12,345.60", "12345.6"), ("1e3", "1000"),
                                      ("1e-5", "0.00001"), ("1e1000000", "1e1000000"), ("9" * 70, "9" * 70)])
def test_answers_are_normalised_before_they_are_compared(raw, norm):
    assert V.normalize_answer(raw) == norm


def test_long_numbers_are_never_rounded_into_one_answer():
    assert V.normalize_answer("1" * 29) != V.normalize_answer("1" * 28 + "2")
    assert V.normalize_answer("1" * 29) == "1" * 29
    assert len(V.normalize_answer("1e-999999")) < 20  # kept as text, not written out to a megabyte


def test_a_pattern_takes_its_last_match_and_the_answer_group():
    assert V.AnswerSource(pattern=r"A:\s*(\S+)").from_text("A: 3\nthen A: $1,204.") == "1204"
    assert V.AnswerSource(pattern=r"(?P<pre>x)=(?P<answer>\d+)").from_text("x=4 x=5") == "5"
    assert V.AnswerSource(pattern=r"\d+").from_text("2 and 17") == "17"  # no group: the whole match
    assert V.AnswerSource(pattern=r"####\s*(.+)").from_text("no answer here") is None
    assert V.AnswerSource(pattern=r"\d*").from_text("abc 42 def") == "42"  # the last non-empty match
    with pytest.raises(ConfigError, match="not a regular expression"):
        V.AnswerSource(pattern="(unclosed")
    with pytest.raises(ConfigError, match="one of"):
        V.AnswerSource()


def test_no_extractable_answer_at_all_is_said_in_one_line():
    with pytest.raises(DataError, match="none of the 3 candidates has a final answer"):
        V.require_answers([None, None, None], V.AnswerSource(pattern="####"))
    with pytest.raises(ConfigError, match="votes on final answers"):
        V.check_aggregate("vote", False)
    with pytest.raises(ConfigError, match="unknown aggregation"):
        V.check_aggregate("mean", True)


# -- the doors ---------------------------------------------------------------------------------

def voting_rows(rows):
    """Each problem's candidates, plus two rewrites of its first wrong one (same answer, other
    text), so answers repeat within a group and a vote means something."""
    out = []
    for r in rows:
        out.append(r)
        if r["label"] == 0 and not any(x["group"] == r["group"] and x.get("copy") for x in out):
            for k in (1, 2):
                out.append({**r, "text": r["text"].replace("Step", f"Stage{k}", 1) + f" (rewrite {k})", "copy": k})
    return out


PATTERN = r"Answer: (-?\d+)"


@pytest.fixture(scope="module")
def voted(tmp_path_factory, tiny_opt_dir):
    d = tmp_path_factory.mktemp("vote")
    data = write_pointwise_splits(d / "data", transform=voting_rows)
    cache, head = d / "cache", d / "h.pt"
    for split in ("train", "validation", "test"):
        ok("embed", "--data", data, "--split", split, "--model", tiny_opt_dir, "--cache-dir", cache, "-q")
    ok("fit-head", "--data", data, "--model", tiny_opt_dir, "--cache-dir", cache, "--out", head, "--solver", "lbfgs", "-q")
    return d, data, cache, head


def read_jsonl(p):
    return [json.loads(line) for line in open(p)]


@pytest.mark.parametrize("aggregate", V.AGGREGATES)
def test_rank_writes_each_groups_pick_as_the_pure_function_makes_it(voted, tmp_path, aggregate):
    from orm_cache.head import Head

    d, data, cache, head = voted
    out = tmp_path / "ranked.jsonl"
    r = ok("rank", "--head", head, "--input", data / "test.jsonl", "--output", out, "--group-by", "group",
           "--cache-dir", cache, "--answer-pattern", PATTERN, "--aggregate", aggregate)
    T = Head.load(head).temperature
    assert f"pick per group: {aggregate}" in r.output
    rows = read_jsonl(out)
    groups = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    for g, rs in groups.items():
        answers = [row["text"].rsplit("Answer: ", 1)[1].split()[0] for row in rs]
        assert [row["final_answer"] for row in rs] == answers
        p = V.pick([row["score"] for row in rs], answers, aggregate, T)
        assert all(row["group_answer"] == p.answer and row["aggregate"] == aggregate for row in rs)
        assert rs[0]["group_weight"] == pytest.approx(p.weight) and rs[0]["group_share"] == pytest.approx(p.share)
        assert [row["rank"] for row in rs] == p.ranks.tolist()
        assert any(row["rank"] == 1 and row["final_answer"] == p.answer for row in rs)
    # every aggregation's accuracy is printed, from the same scores
    labels = [row["label"] for row in rows]
    b = V.best_of_n_answers([x["score"] for x in rows], labels, [x["group"] for x in rows],
                            [x["final_answer"] for x in rows], T)
    assert (f"best {100 * b['best']:.1f}%, vote {100 * b['vote']:.1f}%, weighted-vote {100 * b['weighted-vote']:.1f}%"
            in r.output)


def test_rank_top_1_under_a_vote_is_one_row_of_the_winning_answer_per_group(voted, tmp_path):
    d, data, cache, head = voted
    out = tmp_path / "top.jsonl"
    ok("rank", "--head", head, "--input", data / "test.jsonl", "--output", out, "--group-by", "group",
       "--cache-dir", cache, "--answer-pattern", PATTERN, "--aggregate", "vote", "--top-k", "1")
    rows = read_jsonl(out)
    assert len(rows) == len({r["group"] for r in rows}) == 6
    assert all(r["final_answer"] == r["group_answer"] for r in rows)
    # the rewritten wrong answer has 3 candidates (4 where another wrong one agrees): the plain vote picks it
    assert all(r["label"] == 0 and r["group_weight"] >= 3 for r in rows)


def test_rank_refuses_votes_without_answers_and_patterns_that_find_none(voted, tmp_path):
    d, data, cache, head = voted
    out = tmp_path / "o.jsonl"
    base = ("rank", "--head", head, "--input", data / "test.jsonl", "--output", out, "--group-by", "group",
            "--cache-dir", cache)
    r = run(*base, "--aggregate", "weighted-vote")
    assert r.exit_code == 1 and "votes on final answers" in r.output and "Traceback" not in r.output
    r = run(*base, "--answer-pattern", r"####\s*(\d+)", "--aggregate", "vote")
    n = len(read_jsonl(data / "test.jsonl"))
    assert r.exit_code == 1 and f"none of the {n} candidates has a final answer" in r.output
    assert not out.exists()
    r = run(*base, "--answer-pattern", "(", "--aggregate", "vote")
    assert r.exit_code == 1 and "not a regular expression" in r.output
    r = run(*base, "--answer-pattern", "x", "--answer-col", "y")
    assert r.exit_code == 2 and "not both" in r.output


def test_rank_with_an_answer_column_and_candidates_without_answers(voted, tmp_path):
    d, data, cache, head = voted
    src = read_jsonl(data / "test.jsonl")
    for i, row in enumerate(src):
        row["final"] = None if i % 5 == 0 else row["text"].rsplit("Answer: ", 1)[1]
    inp = write_jsonl(tmp_path / "in.jsonl", src)
    out = tmp_path / "o.jsonl"
    r = ok("rank", "--head", head, "--input", inp, "--output", out, "--group-by", "group", "--cache-dir", cache,
           "--answer-col", "final", "--aggregate", "vote")
    n_none = sum(row["final"] is None for row in src)
    assert f"{len(src) - n_none:,} of {len(src):,} candidates have one; {n_none:,} without" in r.output
    rows = read_jsonl(out)
    assert [row["final_answer"] for row in rows] == [row["final"] for row in src]


def test_eval_reports_every_aggregation_and_by_a_problem_level_column(voted, tmp_path):
    d, data, cache, head = voted
    src = read_jsonl(data / "test.jsonl")
    for row in src:
        row["tier"] = "low" if int(row["group"][1:]) % 2 else "high"  # one value per problem
        row["rewrite"] = "yes" if row.get("copy") else "no"  # varies within a problem
    inp = write_jsonl(tmp_path / "test.jsonl", src)
    js = tmp_path / "r.json"
    r = ok("eval", "--head", head, "--data", inp, "--cache-dir", cache, "--answer-pattern", PATTERN,
           "--by", "tier", "--by", "rewrite", "--json", js)
    rep = json.loads(js.read_text())
    b = rep["best_of_n_answers"]
    assert b["best"] == pytest.approx(rep["best_of_n"]["accuracy"])
    assert "best-of-N by answer" in r.output and f"vote {100 * b['vote']:.1f}%" in r.output
    assert rep["answers"]["without_answer"] == 0 and rep["answers"]["candidates"] == len(src)
    tiers = {t["value"]: t for t in rep["by"]["tier"]["best_of_n"]}
    assert set(tiers) == {"low", "high"} and sum(t["groups"] for t in tiers.values()) == b["groups"]
    # the per-value numbers average to the overall ones, group-weighted
    for agg in (*V.AGGREGATES, "random", "oracle"):
        assert sum(t[agg] * t["groups"] for t in tiers.values()) / b["groups"] == pytest.approx(b[agg])
    assert "best_of_n" not in rep["by"]["rewrite"] and "differs within a group" in rep["by"]["rewrite"]["best_of_n_note"]


def test_eval_on_pairwise_data_says_there_is_nothing_to_vote_among(voted, tmp_path):
    d, data, cache, head = voted
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"chosen": "a = 1. Answer: 1", "rejected": "a = 2. Answer: 2"}])
    r = run("eval", "--head", head, "--data", pairs, "--cache-dir", cache, "--answer-pattern", PATTERN)
    assert r.exit_code == 1 and "needs labelled traces grouped by problem" in r.output


def test_live_scorer_picks_as_rank_does(voted, tmp_path):
    from orm_cache.pipeline.live import LiveScorer

    d, data, cache, head = voted
    src = [row for row in read_jsonl(data / "test.jsonl") if row["group"] == "p200"]
    out = tmp_path / "o.jsonl"
    ok("rank", "--head", head, "--input", write_jsonl(tmp_path / "g.jsonl", src), "--output", out,
       "--group-by", "group", "--cache-dir", cache, "--answer-pattern", PATTERN, "--aggregate", "weighted-vote")
    ranked = read_jsonl(out)
    scorer = LiveScorer(str(head), device="cpu")
    p = scorer.pick([row["text"] for row in src], answer_pattern=PATTERN)
    assert p["aggregate"] == "weighted-vote" and p["answer"] == ranked[0]["group_answer"]
    assert p["share"] == pytest.approx(ranked[0]["group_share"], rel=1e-4)
    assert np.allclose(p["scores"], [row["score"] for row in ranked], atol=1e-5)
    answers = [row["text"].rsplit("Answer: ", 1)[1].split()[0] for row in src]
    order = scorer.rank([row["text"] for row in src], aggregate="vote", answers=answers)
    pv = V.pick(p["scores"], [V.normalize_answer(a) for a in answers], "vote")
    assert [i for i, _ in order] == np.lexsort((np.arange(len(src)), pv.ranks)).tolist()
    assert answers[order[0][0]] == pv.answer
    assert [i for i, _ in scorer.rank([row["text"] for row in src])] == list(np.argsort(-np.array(p["scores"]),
                                                                                     kind="stable"))
    with pytest.raises(ConfigError, match="votes on final answers"):
        scorer.rank(["a"], aggregate="vote")
    with pytest.raises(DataError, match="one answer"):
        scorer.pick(["a", "b"], answers=["1"])


def test_the_server_ranks_by_answer_as_the_python_door_does(voted):
    import httpx

    from orm_cache.pipeline.live import LiveScorer
    from orm_cache.testing import ServerProcess

    d, data, cache, head = voted
    texts = [row["text"] for row in read_jsonl(data / "test.jsonl") if row["group"] == "p201"]
    answers = [t.rsplit("Answer: ", 1)[1].split()[0] for t in texts]
    want = LiveScorer(str(head), device="cpu").pick(texts, answers=answers)
    with ServerProcess("--head", head, "--cache-dir", cache, "--no-write-back", "--answer-pattern", PATTERN) as s, \
            httpx.Client(base_url=s.url, timeout=120) as c:
        by_pattern = c.post("/rank", json={"candidates": texts, "aggregate": "weighted-vote"}).json()
        by_answers = c.post("/rank", json={"candidates": texts, "aggregate": "weighted-vote",
                                           "answers": answers}).json()
        plain = c.post("/rank", json={"candidates": texts}).json()
        bad = [c.post("/rank", json=body) for body in (
            {"candidates": texts, "aggregate": "mean"},
            {"candidates": texts, "answers": ["1"]},
            {"candidates": texts, "answers": [{"x": 1}] * len(texts)},
            {"candidates": texts, "answer_pattern": ".*"})]
        nothing = c.post("/rank", json={"candidates": ["no digits here", "nor here"], "aggregate": "vote"})
        fine = c.post("/rank", json={"candidates": ["no digits here", "nor here"], "aggregate": None})
        huge = c.post("/rank", json={"candidates": ["a", "b"], "aggregate": "vote", "answers": ["1e1000000", "5"]})
    for got in (by_pattern, by_answers):
        assert got["answer"] == want["answer"] and got["order"] == want["order"] and got["tied"] == want["tied"]
        assert got["share"] == pytest.approx(want["share"], rel=1e-4) and got["aggregate"] == "weighted-vote"
        assert got["answers"] == [V.normalize_answer(a) for a in answers]
    assert plain["aggregate"] == "best" and plain["order"] == np.argsort(-np.array(plain["scores"]), kind="stable").tolist()
    assert [b.status_code for b in bad] == [400, 400, 400, 400]
    assert "unknown aggregation" in bad[0].json()["error"] and "answer_pattern" in bad[3].json()["error"]
    assert nothing.status_code == 400 and "none of the 2 candidates" in nothing.json()["error"]
    assert fine.status_code == 200 and "answer" not in fine.json()  # no answer needed, none found: plain ranking
    assert huge.status_code == 200 and huge.json()["answers"] == ["1e1000000", "5"]


def test_a_pattern_that_backtracks_for_ever_is_stopped_in_one_line():
    import time

    t = time.monotonic()
    with pytest.raises(DataError, match="took more than"):
        V.AnswerSource(pattern=r"\s*(\d+)\s*$", seconds=0.2).from_text(" " * 40_000 + "x 5")
    assert time.monotonic() - t < 5
    with pytest.raises(DataError, match="took more than"):
        V.candidate_answers([(" " * 40_000 + "x 5", 0)] * 3, pattern=r"\s*(\d+)\s*$", seconds=0.2)


def test_rank_says_which_columns_it_replaces_and_which_answer_column_is_missing(voted, tmp_path):
    d, data, cache, head = voted
    src = read_jsonl(data / "test.jsonl")
    inp = write_jsonl(tmp_path / "in.jsonl", [{**r, "final_answer": "PRE", "score": 0} for r in src])
    r = ok("rank", "--head", head, "--input", inp, "--output", tmp_path / "o.jsonl", "--group-by", "group",
           "--cache-dir", cache, "--answer-pattern", PATTERN)
    assert "already has column(s) score, final_answer" in r.output
    r = run("rank", "--head", head, "--input", inp, "--output", tmp_path / "o.jsonl", "--group-by", "group",
            "--cache-dir", cache, "--answer-col", "nosuch")
    assert r.exit_code == 1 and "--answer-col nosuch: no row of" in r.output
    bad = write_jsonl(tmp_path / "bad.jsonl", [{**src[0], "ans": [1, 2]}] + [{**x, "ans": "3"} for x in src[1:]])
    r = run("rank", "--head", head, "--input", bad, "--output", tmp_path / "o.jsonl", "--group-by", "group",
            "--cache-dir", cache, "--answer-col", "ans")
    assert r.exit_code == 1 and f"{bad}:1: answer column 'ans' holds a list" in r.output


def test_a_slow_operator_pattern_does_not_hold_the_server(voted):
    import threading
    import time

    import httpx

    from orm_cache.testing import ServerProcess

    d, data, cache, head = voted
    hostile = " " * 60_000 + "x 5"  # quadratic for this pattern: tens of seconds with Python's re
    with ServerProcess("--head", head, "--cache-dir", cache, "--no-write-back", "--answer-pattern",
                       r"\s*(\d+)\s*$", "--max-text-chars", "100000") as s, \
            httpx.Client(base_url=s.url, timeout=120) as c:
        got = {}
        th = threading.Thread(target=lambda: got.update(r=c.post("/rank", json={
            "candidates": [hostile, "y 4"], "aggregate": "vote"})))
        t0 = time.monotonic()
        th.start()
        time.sleep(0.3)
        health = httpx.get(s.url + "/health", timeout=30)
        health_s = time.monotonic() - t0
        th.join(60)
        rank_s = time.monotonic() - t0
    assert health.status_code == 200 and health_s < 3, health_s  # the loop kept answering
    assert got["r"].status_code == 400 and "took more than" in got["r"].json()["error"]
    assert rank_s < 15, rank_s


def test_rank_skip_invalid_writes_exactly_the_rows_the_first_pass_accepted(voted, tmp_path):
    d, data, cache, head = voted
    src = read_jsonl(data / "test.jsonl")
    rows = [{**r, "ans": r["text"].rsplit("Answer: ", 1)[1].split()[0]} for r in src]
    rows[3]["ans"] = [1, 2]  # a bad answer, found only by the answer column
    rows[-1]["group"] = None  # a bad row late in the input
    inp = tmp_path / "in.jsonl"
    lines = [json.dumps(r) for r in rows]
    lines.insert(10, "{not json")
    inp.write_text("\n".join(lines) + "\n")
    out = tmp_path / "o.jsonl"
    r = ok("rank", "--head", head, "--input", inp, "--output", out, "--group-by", "group", "--cache-dir", cache,
           "--answer-col", "ans", "--aggregate", "vote", "--skip-invalid")
    assert "rejected 3 invalid rows" in r.output
    got = read_jsonl(out)
    want = [x for i, x in enumerate(rows) if i not in (3, len(rows) - 1)]
    assert [g["text"] for g in got] == [w["text"] for w in want]
    assert [s["row"] for s in read_jsonl(tmp_path / "o.jsonl.rejected.jsonl")] == [4, 11, len(lines)]
