"""Head kinds, objectives, ensembles and combined features: each trains, saves, loads and scores
equal to a direct computation, and every command takes every kind."""

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import ok, pointwise_rows, run, write_jsonl, write_pointwise_splits
from orm_cache.config import ConfigConflict, HeadConfig, feature_parts
from orm_cache.head import Head, LinearHead, MLPHead, train
from orm_cache.head.sweep import expand, parse_grid
from orm_cache.head.train import Points, make_net
from orm_cache.store.rows import ArrayRows, ConcatRows
from test_head import planted


def labelled(U=1500, D=32, seed=0):
    """Traces with a planted direction; label 1 where the latent quality is high."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=D)
    u /= np.linalg.norm(u)
    q = rng.normal(size=U)
    X = (rng.normal(size=(U, D)) + 3.0 * q[:, None] * u).astype(np.float32)
    y = (q + 0.3 * rng.normal(size=U) > 0).astype(np.float64)
    ci, ri = rng.integers(0, U, 3000), rng.integers(0, U, 3000)
    keep = y[ci] > y[ri]
    return X, ci[keep], ri[keep], Points(np.arange(U), y)


def held_out_accuracy(head: Head, X, ci, ri) -> float:
    s = head.score(X)
    return float((s[ci] > s[ri]).mean())


def reference_mlp_scores(path, X) -> np.ndarray:
    """An MLP checkpoint scored from its raw tensors, member by member, in float64."""
    st = torch.load(path, weights_only=True)["model_state"]
    W1, b1 = st["hidden.weight"].double().numpy(), st["hidden.bias"].double().numpy()
    w2, b2 = st["out.weight"].double().numpy(), st["out.bias"].double().numpy()
    X = X.astype(np.float64)
    return np.mean([np.maximum(X @ W1[k].T + b1[k], 0) @ w2[k] + b2[k] for k in range(len(b2))], axis=0)


# ------------------------------------------------------------------------------- kinds


def test_mlp_head_learns_saves_loads_and_scores_as_its_tensors(tmp_path):
    X, ci, ri = planted(U=1200, D=32, N=4000)
    tr = (ci < 900) & (ri < 900)
    te = (ci >= 900) & (ri >= 900)
    cfg = HeadConfig(head="mlp", hidden=16, lr=1e-3, steps=400, batch_size=32)
    r = train(X, ci[tr], ri[tr], cfg)
    assert isinstance(r.head, MLPHead) and r.weight is None and r.head.members == 1
    assert held_out_accuracy(r.head, X, ci[te], ri[te]) > 0.9
    s = r.head.score(X)  # every trace of X is a training trace (the pairs pick which are compared)
    assert abs(float(s.mean())) < 1e-3 * float(s.std())  # pairwise: training scores centred by the bias
    path = r.head.with_meta({"feature": "last@-1"}).save(tmp_path / "mlp.pt")
    back = Head.load(path)
    assert isinstance(back, MLPHead) and back.hidden == 16 and back.meta["head"]["kind"] == "mlp"
    np.testing.assert_allclose(back.score(X), reference_mlp_scores(path, X), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(back.score(ArrayRows(X)), back.score(X), rtol=1e-6)  # blockwise == in memory


def test_mlp_standardisation_is_folded_into_the_first_layer():
    X, ci, ri = planted(U=300, D=16, N=500)
    X = X * np.linspace(0.1, 50, 16, dtype=np.float32) + 7  # features on very different scales
    torch.manual_seed(0)
    net, to_head = make_net(HeadConfig(head="mlp", hidden=8), ArrayRows(X))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
        direct = net(torch.from_numpy(X)).double().numpy()
    np.testing.assert_allclose(to_head(net).score(X), direct, rtol=1e-4, atol=1e-4)


def test_linear_ensemble_is_the_mean_of_its_members_and_the_reference_snippet_scores_it(tmp_path):
    X, ci, ri = planted(U=600, D=24, N=2000)
    r = train(X, ci, ri, HeadConfig(ensemble=3, steps=60, lr=1e-3))
    head = r.head
    assert isinstance(head, LinearHead) and head.members == 3
    assert not np.allclose(head.W[0], head.W[1])  # seeds 0, 1, 2 differ
    members = np.stack([X @ head.W[k] + head.b[k] for k in range(3)], axis=1)
    np.testing.assert_allclose(head.score(X), members.mean(axis=1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(head.member_scores(X), members, rtol=1e-5, atol=1e-5)
    path = head.with_meta({}).save(tmp_path / "ens.pt")
    st = torch.load(path, weights_only=True)["model_state"]  # the model card's snippet: one linear layer
    ref = torch.nn.Linear(24, 1)
    ref.load_state_dict({"weight": st["score.weight"], "bias": st["score.bias"]})
    np.testing.assert_allclose(ref(torch.from_numpy(X)).detach().numpy()[:, 0], head.score(X), rtol=1e-5, atol=1e-5)
    assert Head.load(path).members == 3
    # a hand-edited mean that no longer matches its members is refused
    st["score.weight"] = st["score.weight"] * 2
    torch.save({"model_state": st, "orm_cache": {"head": {"kind": "linear"}}}, tmp_path / "edited.pt")
    with pytest.raises(ValueError, match="not the mean of members.weight"):
        Head.load(tmp_path / "edited.pt")


def test_lbfgs_ensemble_uses_bootstrap_resamples_and_seed_alone_is_refused():
    X, ci, ri = planted(U=400, D=16, N=1500)
    r = train(X, ci, ri, HeadConfig(solver="lbfgs", ensemble=2))
    assert r.head.members == 2 and not np.allclose(r.head.W[0], r.head.W[1])
    with pytest.raises(ConfigConflict, match="identical members"):
        HeadConfig(solver="lbfgs", ensemble=2, ensemble_by="seed")
    with pytest.raises(ConfigConflict, match="adamw"):
        HeadConfig(solver="lbfgs", head="mlp")


def test_pointwise_lbfgs_equals_sklearn_logistic_regression_with_intercept():
    from sklearn.linear_model import LogisticRegression

    X, ci, ri, pts = labelled()
    l2 = 2.0
    r = train(X, ci, ri, HeadConfig(solver="lbfgs", objective="pointwise", l2=l2), pts)
    mu, sd = X.astype(np.float64).mean(0), X.astype(np.float64).std(0)
    Z = (X - mu) / sd
    # ours: mean softplus + 0.5·l2·|v|²/M  ==  (Σ softplus + 0.5·l2·|v|²)/M: sklearn's C = 1/l2
    sk = LogisticRegression(C=1.0 / l2, tol=1e-12, max_iter=10_000).fit(Z, pts.labels)
    w = sk.coef_[0] / sd
    b = sk.intercept_[0] - mu @ w
    np.testing.assert_allclose(r.head.score(X), X.astype(np.float64) @ w + b, rtol=1e-4, atol=1e-4)
    assert r.bias == pytest.approx(b, abs=1e-3)  # the learned bias is kept: scores are log-odds


def test_pointwise_adamw_learns_log_odds_and_needs_labels():
    X, ci, ri, pts = labelled()
    r = train(X, ci, ri, HeadConfig(objective="pointwise", lr=1e-2, steps=300, batch_size=32), pts)
    p = 1 / (1 + np.exp(-r.head.score(X)))
    assert ((p > 0.5) == pts.labels.astype(bool)).mean() > 0.85
    assert r.final_loss < np.log(2)
    with pytest.raises(ValueError, match="labelled traces"):
        train(X, ci, ri, HeadConfig(objective="pointwise"))


def test_grid_skips_combinations_that_cannot_train_and_fields_a_kind_ignores():
    with pytest.warns(UserWarning, match="skipped 2 grid combination"):
        cfgs = expand(HeadConfig(), parse_grid("solver=adamw,lbfgs head=linear,mlp hidden=8,32"))
    assert sorted((c.solver, c.head, c.hidden) for c in cfgs) == [
        ("adamw", "linear", 256), ("adamw", "mlp", 8), ("adamw", "mlp", 32), ("lbfgs", "linear", 256)]
    with pytest.raises(ValueError, match="no combination"):
        expand(HeadConfig(), parse_grid("solver=lbfgs head=mlp"))


# ------------------------------------------------------------------------- features


def test_concat_rows_and_feature_names():
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(77, 5)).astype(np.float32), rng.normal(size=(77, 3)).astype(np.float16)
    a, b = ArrayRows(A), ArrayRows(B)
    b.block_rows = 4
    C = ConcatRows([a, b])
    C.block_rows = 10
    want = np.concatenate([A, B.astype(np.float32)], axis=1)
    np.testing.assert_array_equal(C.to_numpy(), want)
    np.testing.assert_array_equal(C.take([5, 0, 76, 5]), want[[5, 0, 76, 5]])
    w = rng.normal(size=8)
    np.testing.assert_allclose(C.matmul(w, np.float64), want.astype(np.float64) @ w, rtol=1e-10)
    assert feature_parts("mean@-4+mean@-1") == ("mean@-4", "mean@-1")
    for bad in ("mean@-3,mean@-4", "mean", "mean@x", "mean@-1+mean@-1", "mean@-1+"):
        with pytest.raises(ValueError):
            feature_parts(bad)


# ------------------------------------------------------------------- the CLI, every kind


@pytest.fixture(scope="module")
def kinds_world(tmp_path_factory, tiny_opt_dir):
    """A tiny OPT store (last, mean at layers -1, -2) of pointwise data, and one head per kind."""
    root = tmp_path_factory.mktemp("kinds")
    model = root / "model"
    shutil.copytree(tiny_opt_dir, model)
    data = write_pointwise_splits(root / "data", train_groups=16, other_groups=8)
    cache = root / "cache"
    common = ["--data", data, "--model", model, "--cache-dir", cache]
    for split in ("train", "validation", "test"):
        ok("embed", *common, "--split", split, "--pooling", "last,mean", "--layers", "-1,-2", "-q")
    heads = {}
    specs = {
        "mlp-ensemble": ["--head", "mlp", "--hidden", "8", "--ensemble", "2", "--lr", "1e-3", "--steps", "50"],
        "pointwise-lbfgs": ["--solver", "lbfgs", "--objective", "pointwise"],
        "combined": ["--solver", "lbfgs", "--feature", "mean@-2+last@-1"],
        "linear-bootstrap": ["--solver", "lbfgs", "--ensemble", "3"],
    }
    for name, args in specs.items():
        heads[name] = root / f"{name}.pt"
        ok("fit-head", *common, "--out", heads[name], *args, "-q")
    return {"common": common, "heads": heads, "data": data, "root": root, "model": model, "cache": cache}


KINDS = ["mlp-ensemble", "pointwise-lbfgs", "combined", "linear-bootstrap"]


@pytest.mark.parametrize("name", KINDS)
def test_every_command_takes_every_kind(kinds_world, name, tmp_path):
    w = kinds_world
    head = w["heads"][name]
    h = Head.load(head)
    rep = tmp_path / "eval.json"
    ok("eval", "--head", head, "--data", w["data"], "--split", "test", "--cache-dir", w["cache"], "--json", rep)
    report = json.loads(rep.read_text())
    assert ("ensemble" in report) == (h.members > 1)
    if h.members > 1:
        e = report["ensemble"]
        assert e["members"] == h.members and 0 <= e["split_pairs"] <= 1
    # score: cached scores equal the head applied to the stored vectors of the same texts
    out = tmp_path / "scored.jsonl"
    ok("score", "--head", head, "--input", w["data"] / "test.jsonl", "--output", out, "--cache-dir", w["cache"], "-q")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    scored = [r["score"] for r in rows]
    if name.startswith("pointwise"):  # its score is a log-odds: p_correct = σ(score)
        np.testing.assert_allclose([r["p_correct"] for r in rows], 1 / (1 + np.exp(-np.array(scored))), rtol=1e-6)
    else:
        assert "p_correct" not in rows[0]
    from orm_cache.pipeline.live import LiveScorer

    texts = [json.loads(line)["text"] for line in (w["data"] / "test.jsonl").read_text().splitlines()]
    live = LiveScorer(head, device="cpu").score(texts)
    np.testing.assert_allclose(scored, live, rtol=1e-4, atol=1e-4)
    ok("rank", "--head", head, "--input", w["data"] / "test.jsonl", "--output", tmp_path / "best.jsonl",
       "--group-by", "group", "--top-k", "1", "--cache-dir", w["cache"], "-q")
    r = run("verify", "--head", head, "--data", w["data"], "--split", "test", "--cache-dir", w["cache"],
            "--sample", "8", "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output


def test_pointwise_objective_on_pairwise_data_is_one_line(kinds_world, tmp_path):
    w = kinds_world
    pairs = write_jsonl(tmp_path / "p" / "train.jsonl", [{"chosen": "a b c", "rejected": "a b d"}] * 3)
    r = run("fit-head", "--data", pairs.parent, "--model", w["model"], "--cache-dir", tmp_path / "c",
            "--objective", "pointwise")
    assert r.exit_code == 1, r.output  # nothing embedded: the store hint, or the objective, in one line
    assert len(r.output.strip().splitlines()) == 1


def test_malformed_or_missing_feature_lists_the_stored_columns(kinds_world):
    w = kinds_world
    for feature in ("mean@-3,mean@-4", "mean@-3+mean@-1"):
        r = run("fit-head", *w["common"], "--feature", feature, "--solver", "lbfgs")
        assert r.exit_code == 1 and "Traceback" not in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1 and "mean@-3" in r.output, r.output
        assert all(c in r.output for c in ("last@-1", "last@-2", "mean@-1", "mean@-2")), r.output  # what is stored


def test_sweep_over_kinds_selects_by_loss_and_refits(kinds_world, tmp_path):
    w = kinds_world
    res = tmp_path / "rows"
    grid = "solver=lbfgs l2=0.1,10 feature=mean@-1,mean@-2+mean@-1; head=mlp hidden=8 lr=1e-3 steps=40 ensemble=1,2"
    r = ok("sweep", *w["common"], "--grid", grid, "--select-by", "loss", "--refit", "--results", res,
           "--out", tmp_path / "best.pt", "-q")
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert len(rows) == 6
    losses = [row["validation_loss"] for row in rows]
    assert losses == sorted(losses)  # ranked by loss
    assert {row["head"] for row in rows} == {"linear", "mlp"}
    assert all(row["hidden"] is None for row in rows if row["head"] == "linear")  # a field the kind ignores
    best = Head.load(tmp_path / "best.pt")
    refit = best.meta["sweep"]["refit"]
    assert refit["splits"] == ["train", "validation"] and best.meta["data"]["split"] == "train+validation"
    assert best.meta["data"]["n_pairs"] == refit["pairs"] > Head.load(w["heads"]["combined"]).meta["data"]["n_pairs"]
    assert "refit" in r.output


def test_non_finite_scores_say_where_they_came_from():
    from orm_cache.head import CheckpointError
    from orm_cache.store import StoreError

    X = np.ones((5, 4), np.float32)
    with pytest.raises(CheckpointError, match="training diverged"):
        LinearHead(np.full(4, np.nan, np.float32), 0.0).score(X)
    X[2, 1] = np.nan
    with pytest.raises(StoreError, match="1 of 5 scores are NaN or Inf because their cached vectors are"):
        LinearHead(np.ones(4, np.float32), 0.0).score(X)
    with pytest.raises(StoreError, match="cached vectors"):
        MLPHead(np.ones((2, 3, 4)), np.zeros((2, 3)), np.ones((2, 3)), np.zeros(2)).score(X)


# ------------------------------------------------------- found by the hostile review of issue 16


def test_feature_override_of_another_width_is_one_line(kinds_world, tmp_path):
    w = kinds_world
    for cmd in (["eval", "--data", w["data"], "--split", "test"],
                ["score", "--input", w["data"] / "test.jsonl", "--output", tmp_path / "o.jsonl"]):
        r = run(*cmd, "--head", w["heads"]["combined"], "--feature", "mean@-1", "--cache-dir", w["cache"])
        assert r.exit_code == 1 and "Traceback" not in r.output and "128-dim" in r.output, r.output
    assert not (tmp_path / "o.jsonl").exists()


def test_a_diverging_configuration_ranks_last_instead_of_ending_the_sweep(kinds_world, tmp_path):
    w = kinds_world
    grid = "head=mlp hidden=4 steps=30 grad_clip=0 lr=1e12,1e-3; solver=lbfgs"
    ok("sweep", *w["common"], "--grid", grid, "--results", tmp_path / "rows", "--out", tmp_path / "b.pt", "-q")
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert len(rows) == 3 and rows[-1]["lr"] == 1e12 and Head.load(tmp_path / "b.pt").members == 1


def test_sweep_and_pointwise_refusals_are_one_line(kinds_world, tmp_path):
    w = kinds_world
    r = run("sweep", *w["common"], "--grid", "solver=lbfgs", "--select-on", "train")
    assert r.exit_code == 1 and "--select-on must differ" in r.output, r.output
    ones = write_jsonl(tmp_path / "d" / "train.jsonl", [x for x in pointwise_rows(16, seed=0) if x["label"] == 1])
    X = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="all 4 training labels are 1"):
        train(X, np.array([], int), np.array([], int), HeadConfig(objective="pointwise"), Points(np.arange(4), np.ones(4)))
    assert ones.exists()


def test_response_mean_refuses_a_split_whose_rows_split_one_text_two_ways(tiny_opt_dir, tmp_path):
    rows = [{"prompt": "Q: 3+4?", "text": "It is 7.", "label": 1, "group": "a"},
            {"text": "Q: 3+4?\n\nIt is 7.", "label": 1, "group": "b"},
            {"prompt": "Q: 3+4?", "text": "It is 8.", "label": 0, "group": "a"},
            {"text": "Q: 3+5?\n\nIt is 9.", "label": 0, "group": "b"}]
    data = write_jsonl(tmp_path / "d" / "train.jsonl", rows).parent
    common = ["--data", data, "--model", tiny_opt_dir, "--cache-dir", tmp_path / "c"]
    ok("embed", *common, "--pooling", "mean,response_mean", "-q")
    r = run("fit-head", *common, "--feature", "response_mean@-1", "--solver", "lbfgs", "--eval-split", "")
    assert r.exit_code == 1 and "two places" in r.output and "character 0" in r.output, r.output
    ok("fit-head", *common, "--feature", "mean@-1", "--solver", "lbfgs", "--eval-split", "", "-q")  # mean is fine
