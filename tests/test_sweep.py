"""Sweeps: grid parsing, batched AdamW == PyTorch's AdamW, a config alone == inside the sweep,
reproducible leaderboards, and the CLI end to end."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from orm_cache.cli import cli
from orm_cache.config import HeadConfig
from orm_cache.head.sweep import expand, group_configs, parse_grid, run_sweep, train_adamw_batched, train_lbfgs_path
from orm_cache.head.train import train_adamw, train_lbfgs

from test_head import planted


def test_parse_grid_and_expand(tmp_path):
    g = parse_grid("lr=1e-5,2e-5 steps=400,800 betas=0.9/0.999,0.8/0.99 solver=adamw")
    assert g["lr"] == [1e-5, 2e-5] and g["steps"] == [400, 800] and g["betas"] == ["0.9,0.999", "0.8,0.99"]
    cfgs = expand(HeadConfig(), g)
    assert len(cfgs) == 8 and cfgs[-1].betas == (0.8, 0.99) and cfgs[0].lr == 1e-5
    (tmp_path / "g.json").write_text(json.dumps({"l2": [0.1, 1], "solver": "lbfgs"}))
    assert parse_grid(path=str(tmp_path / "g.json")) == {"l2": [0.1, 1.0], "solver": ["lbfgs"]}
    with pytest.raises(ValueError, match="unknown grid field 'learning_rate'"):
        parse_grid("learning_rate=1")
    with pytest.raises(ValueError, match="grid field 'lr': values \\['abc'\\] are not all numbers"):
        parse_grid("lr=abc")


def test_grouping_shares_batch_stream_only():
    cfgs = expand(HeadConfig(feature="f"), parse_grid("lr=1e-5,1e-4 seed=0,1 batch_size=8"))
    cfgs += expand(HeadConfig(feature="f", solver="lbfgs"), parse_grid("l2=0.1,1"))
    groups = group_configs(cfgs)
    assert sorted(map(len, groups)) == [2, 2, 2]


def test_config_alone_equals_config_inside_the_batch():
    X, ci, ri = planted(U=300, D=48, N=900, seed=1, strength=5.0)
    grid = parse_grid("lr=1e-4,2e-3 weight_decay=0,0.1 margin=0,0.5 grad_clip=0,1 center_coef=0,0.01")
    cfgs = expand(HeadConfig(steps=120, batch_size=8, warmup_steps=10, feature="f"), grid)
    batched = train_adamw_batched(X, ci, ri, cfgs)
    for c, b in zip(cfgs, batched):
        alone = train_adamw(X, ci, ri, c)
        np.testing.assert_allclose(b.weight, alone.weight, rtol=1e-4, atol=1e-6, err_msg=str(c))
        assert b.bias == pytest.approx(alone.bias, rel=1e-4, abs=1e-6)


def test_batched_step_matches_torch_adamw_exactly_enough():
    """One K=1 step against torch.optim.AdamW on the same gradient stream (lr > 0 from step 0)."""
    X, ci, ri = planted(U=100, D=16, N=200, seed=2, strength=3.0)
    c = HeadConfig(steps=5, warmup_steps=0, lr=1e-2, weight_decay=0.05, feature="f")
    np.testing.assert_allclose(train_adamw_batched(X, ci, ri, [c])[0].weight, train_adamw(X, ci, ri, c).weight,
                               rtol=1e-5, atol=1e-7)


def test_lbfgs_path_equals_independent_solves():
    X, ci, ri = planted(U=300, D=20, N=800, seed=4, strength=2.0)
    cfgs = [HeadConfig(solver="lbfgs", l2=l2, feature="f") for l2 in (10.0, 1.0, 0.1)]
    for c, r in zip(cfgs, train_lbfgs_path(X, ci, ri, cfgs)):
        np.testing.assert_allclose(r.weight, train_lbfgs(X, ci, ri, c).weight, rtol=1e-3, atol=1e-5)


def test_run_sweep_is_reproducible_and_ranks_on_selection_data():
    X, ci, ri = planted(U=400, D=32, N=1200, seed=5, strength=8.0)
    tr = (ci < 300) & (ri < 300)
    se = ~tr & (ci >= 300) & (ri >= 300)
    feats = {"f": (X, ci[tr], ri[tr])}
    sel = {"f": (X, ci[se], ri[se])}
    cfgs = expand(HeadConfig(steps=60, feature="f"), parse_grid("lr=1e-5,1e-3 seed=0,1"))
    a, b = run_sweep(feats, sel, cfgs), run_sweep(feats, sel, cfgs)
    assert [r.select_accuracy for r in a] == [r.select_accuracy for r in b]
    for r in a:
        s = X @ r.result.weight
        assert r.select_accuracy == pytest.approx(((s[ci[se]] - s[ri[se]]) > 0).mean())


def test_sweep_cli_end_to_end(tiny_opt_dir, pointwise_dir, tmp_path):
    cache = tmp_path / "c"
    for split in ("train", "validation", "test"):
        r = CliRunner().invoke(cli, ["embed", "--data", str(pointwise_dir), "--split", split, "--model",
                                     str(tiny_opt_dir), "--cache-dir", str(cache), "--pooling", "last,mean", "-q"])
        assert r.exit_code == 0, r.output
    args = ["sweep", "--data", str(pointwise_dir), "--model", str(tiny_opt_dir), "--cache-dir", str(cache),
            "--grid", "lr=1e-4,1e-3 steps=50 seed=0,1 feature=last@-1,mean@-1", "--results", str(tmp_path / "res"),
            "--out", str(tmp_path / "best.pt"), "--report-on", "test", "-q"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "8 configurations" in r.output and "selected head on test" in r.output
    rows = json.loads((tmp_path / "res.json").read_text())
    assert len(rows) == 8 and rows[0]["rank"] == 1
    assert rows[0]["validation_accuracy"] >= max(x["validation_accuracy"] for x in rows)
    assert (tmp_path / "res.csv").read_text().count("\n") == 9
    from orm_cache.head import Head

    best = Head.load(tmp_path / "best.pt")
    assert best.meta["sweep"]["configurations"] == 8 and best.meta["config"]["lr"] == rows[0]["lr"]
    bad = CliRunner().invoke(cli, args[:-7] + ["--report-on", "validation"])
    assert bad.exit_code == 1 and "must differ" in bad.output
