"""Stage 2 training and checkpoints: the recipe learns, lbfgs is exact, checkpoints interoperate."""

import pickle

import numpy as np
import pytest
import torch

from orm_cache.config import HeadConfig
from orm_cache.head import CheckpointError, Head, LinearHead, pairwise_loss, train
from orm_cache.head.train import batch_order, standardizer, warmup_factor


def planted(U=2000, D=256, N=6000, seed=0, strength=30.0):
    """Vectors with a known direction, shaped like LM hidden states: isotropic unit noise plus a
    latent quality ``q`` along one direction with large activation differences; chosen has the
    higher ``q``."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=D)
    u /= np.linalg.norm(u)
    q = rng.normal(size=U)
    X = (rng.normal(size=(U, D)) + strength * q[:, None] * u).astype(np.float32)
    ci, ri = rng.integers(0, U, N), rng.integers(0, U, N)
    keep = ci != ri
    ci, ri = ci[keep], ri[keep]
    flip = q[ci] < q[ri]
    ci[flip], ri[flip] = ri[flip], ci[flip]
    return X, ci, ri


def test_loss_is_bradley_terry():
    rc, rr = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    expected = -torch.log(torch.sigmoid(rc - rr)).mean()
    assert torch.allclose(pairwise_loss(rc, rr), expected)
    assert torch.allclose(pairwise_loss(rc, rr, margin=0.5), -torch.log(torch.sigmoid(rc - rr - 0.5)).mean())
    assert torch.allclose(pairwise_loss(rc, rr, center_coef=0.1), expected + 0.1 * ((rc + rr) ** 2).mean())


def test_reference_recipe_learns_a_planted_direction():
    X, ci, ri = planted()
    test = (ci >= 1500) & (ri >= 1500)  # held-out traces

    def held_out_accuracy(cfg):
        r = train(X[:1500], *_subset(ci, ri, 1500), cfg)
        s = X @ r.weight
        return ((s[ci[test]] - s[ri[test]]) > 0).mean(), r

    acc, r = held_out_accuracy(HeadConfig())  # the card's defaults, unchanged
    assert acc > 0.95, acc
    assert r.steps == 800 and r.history[-1][0] == 800
    untrained, _ = held_out_accuracy(HeadConfig(steps=1))  # the random init alone does not pass
    assert untrained < 0.9, untrained


def _subset(ci, ri, U):
    keep = (ci < U) & (ri < U)
    return ci[keep], ri[keep]


def test_schedule_and_batches_follow_the_recipe():
    assert [warmup_factor(t, 50) for t in (0, 25, 49, 50, 800)] == [0.0, 0.5, 0.98, 1.0, 1.0]
    g = torch.Generator().manual_seed(0)
    batches = batch_order(20, 8, 5, g)
    assert [len(b) for b in batches] == [8, 8, 4, 8, 8]  # epoch of 20 pairs: 8, 8, 4, then a new epoch
    assert sorted(torch.cat(batches[:3]).tolist()) == list(range(20))


def test_same_seed_same_head_and_bias_centres_train_scores():
    X, ci, ri = planted(U=300, D=32, N=800)
    a, b = train(X, ci, ri, HeadConfig(steps=100)), train(X, ci, ri, HeadConfig(steps=100))
    np.testing.assert_array_equal(a.weight, b.weight)
    c = train(X, ci, ri, HeadConfig(steps=100, seed=1))
    assert not np.array_equal(a.weight, c.weight)
    scores = X @ a.weight + a.bias
    assert abs(scores.mean()) < 1e-3 * scores.std()
    assert a.score_std == pytest.approx(scores.std(), rel=1e-4)


@pytest.mark.parametrize("l2", [0.1, 3.0])
def test_lbfgs_equals_sklearn_logistic_regression(l2):
    from sklearn.linear_model import LogisticRegression

    X, ci, ri = planted(U=400, D=24, N=1500, seed=3)
    rng = np.random.default_rng(0)
    flip = rng.random(len(ci)) < 0.2  # label noise: the optimum is finite
    ci, ri = np.where(flip, ri, ci), np.where(flip, ci, ri)
    r = train(X, ci, ri, HeadConfig(solver="lbfgs", l2=l2))
    mu, sd = standardizer(X)
    Z = ((X - mu) / sd).astype(np.float64)
    Dz = Z[ci] - Z[ri]
    # mean softplus + l2|v|²/(2N)  ==  sklearn's C·Σ logloss + |w|²/2 on ±Δ with C = 1/(2·l2)
    sk = LogisticRegression(C=1 / (2 * l2), fit_intercept=False, tol=1e-10, max_iter=10000)
    sk.fit(np.vstack([Dz, -Dz]), np.r_[np.ones(len(Dz)), np.zeros(len(Dz))])
    np.testing.assert_allclose(r.weight * sd, sk.coef_[0], rtol=2e-3, atol=2e-4)


class ReferenceModel(torch.nn.Module):
    """The reference card's model: a frozen encoder (absent here) and a linear ``score`` head."""

    def __init__(self, d):
        super().__init__()
        self.score = torch.nn.Linear(d, 1)


def test_checkpoint_loads_through_the_reference_snippet(tmp_path):
    head = LinearHead(np.arange(8, dtype=np.float32), 0.5, {"fingerprint": "f" * 64, "feature": "last@-1"})
    path = head.save(tmp_path / "h.pt")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["model_state"]["score.weight"].shape == (1, 8)
    assert ckpt["model_state"]["score.bias"].shape == (1,)
    model = ReferenceModel(8)
    missing, unexpected = model.load_state_dict(ckpt["model_state"], strict=False)
    assert not unexpected and not missing
    x = torch.randn(3, 8)
    np.testing.assert_allclose(model.score(x).squeeze(-1).detach().numpy(), head.score(x.numpy()), rtol=1e-6)
    assert Head.load(path).fingerprint == "f" * 64


def test_reference_format_file_imports_and_pickles_are_refused(tmp_path):
    m = ReferenceModel(4)
    torch.save({"model_state": {f"score.{k}": v for k, v in m.score.state_dict().items()}}, tmp_path / "ref.pt")
    head = Head.load(tmp_path / "ref.pt")
    assert head.dim == 4 and head.fingerprint is None
    torch.save({"model_state": {"score.weight": torch.ones(1, 4), "score.bias": torch.zeros(1)},
                "payload": pickle.loads(pickle.dumps(ReferenceModel(2)))}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused"):
        Head.load(tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        Head.load(tmp_path / "nope.pt")


def _blas_threads() -> set[int]:
    from threadpoolctl import threadpool_info

    return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


def test_lbfgs_solves_on_one_blas_thread_with_the_same_result(monkeypatch):
    """The objective runs with NumPy's (and SciPy's) BLAS on one thread, the caller's limits come
    back afterwards, and the head is the one an unlimited solve finds."""
    import contextlib
    import importlib

    from threadpoolctl import threadpool_limits

    T = importlib.import_module("orm_cache.head.train")  # the module (the package exports a function of that name)

    X, ci, ri = planted(U=400, D=48, N=1500, seed=7, strength=2.0)
    cfgs = [HeadConfig(solver="lbfgs", l2=l2) for l2 in (10.0, 0.1)]
    seen = []
    objective = T.lbfgs_objective

    def spying_objective(*a, **k):
        seen.append(_blas_threads())
        return objective(*a, **k)

    monkeypatch.setattr(T, "lbfgs_objective", spying_objective)
    with threadpool_limits(limits=2, user_api="blas"):
        limited = T.train_lbfgs_path(X, ci, ri, cfgs)
        assert _blas_threads() == {2}  # restored
    assert seen == [{1}, {1}]
    monkeypatch.setattr(T, "single_blas_thread", contextlib.nullcontext)
    with threadpool_limits(limits=2, user_api="blas"):
        free = T.train_lbfgs_path(X, ci, ri, cfgs)
    assert seen[2:] == [{2}, {2}]
    for a, b in zip(limited, free):
        np.testing.assert_allclose(a.weight, b.weight, rtol=1e-5, atol=1e-7)
        assert a.steps == b.steps
