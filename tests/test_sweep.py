"""Sweeps: grid parsing, batched AdamW == PyTorch's AdamW, a config alone == inside the sweep,
reproducible leaderboards, and the CLI end to end."""

import csv
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from orm_cache.cli import cli
from orm_cache.config import HEAD_FIELDS, SOLVER_ONLY, HeadConfig
from orm_cache.head.sweep import expand, group_configs, parse_grid, run_sweep, train_adamw_batched, train_lbfgs_path
from orm_cache.head.train import train_adamw, train_lbfgs

from test_head import planted


def test_parse_grid_and_expand(tmp_path):
    [g] = parse_grid("lr=1e-5,2e-5 steps=400,800 betas=0.9/0.999,0.8/0.99 solver=adamw")
    assert g["lr"] == [1e-5, 2e-5] and g["steps"] == [400, 800] and g["betas"] == ["0.9,0.999", "0.8,0.99"]
    cfgs = expand(HeadConfig(), g)
    assert len(cfgs) == 8 and cfgs[-1].betas == (0.8, 0.99) and cfgs[0].lr == 1e-5
    (tmp_path / "g.json").write_text(json.dumps({"l2": [0.1, 1], "solver": "lbfgs"}))
    assert parse_grid(path=str(tmp_path / "g.json")) == [{"l2": [0.1, 1.0], "solver": ["lbfgs"]}]
    with pytest.raises(ValueError, match="unknown grid field 'learning_rate'"):
        parse_grid("learning_rate=1")
    with pytest.raises(ValueError, match="grid field 'lr': 'abc' is not a number"):
        parse_grid("lr=abc")


def test_each_field_belongs_to_a_solver():
    assert set(SOLVER_ONLY) <= set(HEAD_FIELDS) and set(SOLVER_ONLY.values()) == {"adamw", "lbfgs"}
    lb, ad = HeadConfig(solver="lbfgs", lr=1e-3, steps=5, seed=3, l2=7.0), HeadConfig(lr=1e-3, l2=7.0)
    assert not lb.uses("lr") and lb.uses("l2") and lb.uses("margin") and ad.uses("lr") and not ad.uses("l2")
    assert lb.effective() == HeadConfig(solver="lbfgs", l2=7.0)
    assert ad.effective() == HeadConfig(lr=1e-3)


def test_ignored_grid_fields_multiply_nothing():
    cfgs = expand(HeadConfig(feature="last@-1"), parse_grid("solver=lbfgs,adamw l2=0.1,1,10 lr=1e-5,1e-4"))
    assert len(cfgs) == 5 and len(set(cfgs)) == 5  # 3 lbfgs (l2) + 2 adamw (lr), not 2 x 3 x 2 = 12
    assert [(c.solver, c.l2, c.lr) for c in cfgs] == [  # first-seen order; ignored fields at their default
        ("lbfgs", 0.1, 2e-5), ("lbfgs", 1.0, 2e-5), ("lbfgs", 10.0, 2e-5), ("adamw", 1.0, 1e-5), ("adamw", 1.0, 1e-4)]
    issue = expand(HeadConfig(), parse_grid("solver=lbfgs l2=0.1,10; solver=adamw lr=1e-3"))
    assert [(c.solver, c.l2, c.lr) for c in issue] == [("lbfgs", 0.1, 2e-5), ("lbfgs", 10.0, 2e-5), ("adamw", 1.0, 1e-3)]
    # sub-grids are a union: the configuration both name trains once
    union = expand(HeadConfig(), parse_grid("solver=lbfgs l2=0.1,1 ;solver=lbfgs l2=1,10 margin=0"))
    assert [c.l2 for c in union] == [0.1, 1.0, 10.0]
    # a base option the solver ignores is dropped too (fit-head's --lr under solver=lbfgs)
    assert expand(HeadConfig(lr=1e-3, steps=5), parse_grid("solver=lbfgs,lbfgs l2=1")) == [HeadConfig(solver="lbfgs")]
    with pytest.warns(UserWarning, match="grid field 'l2' does not apply to solver adamw"):
        assert len(expand(HeadConfig(), parse_grid("l2=0.1,1,10 lr=1e-5"))) == 1


def test_grid_file_holds_a_list_of_sub_grids(tmp_path):
    subgrids = [{"solver": "lbfgs", "l2": [0.1, 10]}, {"solver": "adamw", "lr": [1e-3], "betas": [[0.8, 0.99]]}]
    (tmp_path / "g.json").write_text(json.dumps(subgrids))
    (tmp_path / "g.yaml").write_text("- {solver: lbfgs, l2: [0.1, 10]}\n- {solver: adamw, lr: [1.0e-3], betas: [[0.8, 0.99]]}\n")
    for name in ("g.json", "g.yaml"):
        cfgs = expand(HeadConfig(), parse_grid(path=str(tmp_path / name)))
        assert [(c.solver, c.l2, c.lr, c.betas) for c in cfgs] == [
            ("lbfgs", 0.1, 2e-5, (0.9, 0.999)), ("lbfgs", 10.0, 2e-5, (0.9, 0.999)), ("adamw", 1.0, 1e-3, (0.8, 0.99))]


@pytest.mark.parametrize("text, path_doc, message", [
    ("lr=1e-3; solver", None, "grid item 'solver' is not field=v1,v2"),
    ("lr=1e-3;;l2=1", None, "sub-grid 2 of 'lr=1e-3;;l2=1' is empty"),
    ("lr=1e-3;", None, "sub-grid 2 of 'lr=1e-3;' is empty"),
    ("lr=1e-3 lr=1e-4", None, "grid field 'lr' is given twice in one sub-grid"),
    ("steps=1.5", None, "grid field 'steps': '1.5' is not a whole number"),
    ("lr=nan", None, "grid field 'lr': 'nan' is not a finite number"),
    ("lr=", None, "grid field 'lr' has no values"),
    (None, [], "expected a mapping of field -> list of values, or a list of such mappings"),
    (None, [{"lr": [1e-3]}, 3], "expected a mapping of field -> list of values, or a list of such mappings"),
    (None, [{"lr": [1e-3]}, {}], "mapping 2 is empty"),
    ("lr=1e-3", {"l2": [1]}, "give a grid or a grid file, not both"),
])
def test_malformed_grids_are_one_line(tmp_path, text, path_doc, message):
    path = None
    if path_doc is not None:
        path = str(tmp_path / "g.json")
        (tmp_path / "g.json").write_text(json.dumps(path_doc))
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        parse_grid(text, path)
    assert "\n" not in str(e.value)


def test_nonsense_values_are_refused_when_expanded():
    for grid, message in (("solver=sgd", "grid solver=sgd: --solver 'sgd' is not one of adamw, lbfgs"),
                          ("lr=-1", "grid lr=-1.0: --lr -1.0 must be positive"),
                          ("lbfgs_max_iter=0", "grid lbfgs_max_iter=0: --lbfgs-max-iter 0 must be at least 1")):
        with pytest.raises(ValueError, match=re.escape(message)):
            expand(HeadConfig(solver="lbfgs"), parse_grid(grid))
    with pytest.raises(ValueError, match="--l2 inf must be a finite number"):
        HeadConfig(l2=float("inf"))  # fit-head --l2 inf, which the grid parser refuses before


def test_table_rows_show_only_the_fields_their_solver_uses():
    from orm_cache.pipeline.fit import sweep_table

    X, ci, ri = planted(U=200, D=16, N=600, seed=6, strength=5.0)
    cfgs = expand(HeadConfig(feature="last@-1", steps=20), parse_grid("solver=lbfgs,adamw l2=0.1,10 lr=1e-4,1e-3"))
    rows = sweep_table(run_sweep({"last@-1": (X, ci, ri)}, {"last@-1": (X, ci, ri)}, cfgs), "validation")
    assert len(rows) == 4 and len({tuple(r) for r in rows}) == 1  # the same columns in every row
    for r in rows:
        if r["solver"] == "lbfgs":
            assert r["l2"] in (0.1, 10.0) and r["lr"] is None and r["steps"] is None and r["betas"] is None
        else:
            assert r["lr"] in (1e-4, 1e-3) and r["l2"] is None and r["steps"] == 20 and r["betas"] == "0.9/0.999"
        assert r["feature"] == "last@-1" and r["margin"] == 0.0


def test_grouping_shares_batch_stream_only():
    cfgs = expand(HeadConfig(feature="last@-1"), parse_grid("lr=1e-5,1e-4 seed=0,1 batch_size=8"))
    cfgs += expand(HeadConfig(feature="last@-1", solver="lbfgs"), parse_grid("l2=0.1,1"))
    groups = group_configs(cfgs)
    assert sorted(map(len, groups)) == [2, 2, 2]


def test_config_alone_equals_config_inside_the_batch():
    X, ci, ri = planted(U=300, D=48, N=900, seed=1, strength=5.0)
    grid = parse_grid("lr=1e-4,2e-3 weight_decay=0,0.1 margin=0,0.5 grad_clip=0,1 center_coef=0,0.01")
    cfgs = expand(HeadConfig(steps=120, batch_size=8, warmup_steps=10, feature="last@-1"), grid)
    batched = train_adamw_batched(X, ci, ri, cfgs)
    for c, b in zip(cfgs, batched):
        alone = train_adamw(X, ci, ri, c)
        np.testing.assert_allclose(b.weight, alone.weight, rtol=1e-4, atol=1e-6, err_msg=str(c))
        assert b.bias == pytest.approx(alone.bias, rel=1e-4, abs=1e-6)


def test_batched_step_matches_torch_adamw_exactly_enough():
    """One K=1 step against torch.optim.AdamW on the same gradient stream (lr > 0 from step 0)."""
    X, ci, ri = planted(U=100, D=16, N=200, seed=2, strength=3.0)
    c = HeadConfig(steps=5, warmup_steps=0, lr=1e-2, weight_decay=0.05, feature="last@-1")
    np.testing.assert_allclose(train_adamw_batched(X, ci, ri, [c])[0].weight, train_adamw(X, ci, ri, c).weight,
                               rtol=1e-5, atol=1e-7)


def test_lbfgs_path_equals_independent_solves():
    X, ci, ri = planted(U=300, D=20, N=800, seed=4, strength=2.0)
    cfgs = [HeadConfig(solver="lbfgs", l2=l2, feature="last@-1") for l2 in (10.0, 1.0, 0.1)]
    for c, r in zip(cfgs, train_lbfgs_path(X, ci, ri, cfgs)):
        np.testing.assert_allclose(r.weight, train_lbfgs(X, ci, ri, c).weight, rtol=1e-3, atol=1e-5)


def test_run_sweep_is_reproducible_and_ranks_on_selection_data():
    X, ci, ri = planted(U=400, D=32, N=1200, seed=5, strength=8.0)
    tr = (ci < 300) & (ri < 300)
    se = ~tr & (ci >= 300) & (ri >= 300)
    feats = {"last@-1": (X, ci[tr], ri[tr])}
    sel = {"last@-1": (X, ci[se], ri[se])}
    cfgs = expand(HeadConfig(steps=60, feature="last@-1"), parse_grid("lr=1e-5,1e-3 seed=0,1"))
    a, b = run_sweep(feats, sel, cfgs), run_sweep(feats, sel, cfgs)
    assert [r.select_accuracy for r in a] == [r.select_accuracy for r in b]
    for r in a:
        s = X @ r.result.weight
        assert r.select_accuracy == pytest.approx(((s[ci[se]] - s[ri[se]]) > 0).mean())


def test_sweep_scores_on_one_blas_thread(monkeypatch):
    from threadpoolctl import threadpool_info, threadpool_limits

    import orm_cache.head.sweep as S

    seen = []
    trainer = S.train_adamw_batched

    def spying_trainer(*a):
        seen.append({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})
        return trainer(*a)

    monkeypatch.setattr(S, "train_adamw_batched", spying_trainer)
    X, ci, ri = planted(U=100, D=8, N=300, seed=8)
    with threadpool_limits(limits=2, user_api="blas"):
        run_sweep({"last@-1": (X, ci, ri)}, {"last@-1": (X, ci, ri)}, expand(HeadConfig(feature="last@-1", steps=5), {"seed": [0, 1]}))
    assert seen == [{1}, {1}]


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

    # sub-grids: 2 lbfgs + 1 adamw; the leaderboard and the CSV leave out what a solver ignores
    mixed = args[:7] + ["--grid", "solver=lbfgs l2=0.1,10; solver=adamw lr=1e-3 steps=20",
                        "--results", str(tmp_path / "mix"), "--out", str(tmp_path / "mix.pt"), "-q"]
    r = CliRunner().invoke(cli, mixed)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert "3 configurations" in lines[0]
    cols = ["rank", "solver", "l2", "lr", "steps"]
    assert lines[1].split()[:5] == cols

    def cell(line, name):  # the leaderboard's columns are 12 wide, 2 apart
        i = 2 + 14 * cols.index(name)
        return line[i:i + 12].strip()

    board = {cell(line, "solver") + cell(line, "l2") + cell(line, "lr"): line for line in lines[2:5]}
    assert set(board) == {"lbfgs0.1", "lbfgs10.0", "adamw0.001"}
    assert cell(board["lbfgs10.0"], "steps") == "" and cell(board["adamw0.001"], "steps") == "20"
    with open(tmp_path / "mix.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == 3 and set(csv_rows[0]) >= set(HEAD_FIELDS)
    for row in csv_rows:
        assert (row["lr"] == "" and row["steps"] == "") if row["solver"] == "lbfgs" else row["l2"] == ""
    assert Head.load(tmp_path / "mix.pt").meta["sweep"]["grid"] == [
        {"solver": ["lbfgs"], "l2": ["0.1", "10.0"]}, {"solver": ["adamw"], "lr": ["0.001"], "steps": ["20"]}]
    bad = CliRunner().invoke(cli, args[:7] + ["--grid", "lr=1e-3;;l2=1"])
    assert bad.exit_code == 1 and bad.output.strip().count("\n") == 0 and "sub-grid 2" in bad.output
