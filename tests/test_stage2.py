"""fit-head and eval end to end over a store built with the tiny OPT; guards and isolation."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from orm_cache.cli import cli
from orm_cache.head import Head
from orm_cache.store import StoreError


def run(*args):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    return r


@pytest.fixture
def embedded(tiny_opt_dir, pointwise_dir, tmp_path):
    cache = tmp_path / "c"
    for split in ("train", "validation", "test"):
        r = run("embed", "--data", pointwise_dir, "--split", split, "--model", tiny_opt_dir,
                "--cache-dir", cache, "--pooling", "last,mean", "-q")
        assert r.exit_code == 0, r.output
    return pointwise_dir, tiny_opt_dir, cache


def test_fit_head_then_eval_writes_the_full_metric_table(embedded, tmp_path):
    data, model, cache = embedded
    head = tmp_path / "h.pt"
    r = run("fit-head", "--data", data, "--model", model, "--cache-dir", cache, "--out", head,
            "--solver", "lbfgs", "--feature", "mean@-1", "-q")
    assert r.exit_code == 0, r.output
    assert "trained lbfgs head" in r.output and "split validation" in r.output
    h = Head.load(head)
    assert h.feature == "mean@-1" and h.dim == 64 and h.temperature is not None
    assert h.meta["config"]["solver"] == "lbfgs" and h.meta["data"]["split"] == "train"

    out = tmp_path / "m.json"
    r = run("eval", "--head", head, "--data", data, "--split", "test", "--cache-dir", cache, "--json", out,
            "--bootstrap", 200, "-q")
    assert r.exit_code == 0, r.output
    m = json.loads(out.read_text())
    for key in ("accuracy", "ci", "margin", "length_buckets", "antisymmetry", "near_ties", "calibration",
                "pointwise", "best_of_n", "best_of_n_curve"):
        assert key in m, key
    assert m["pairs"] == 18 and m["calibration"]["fitted_on"] == "validation"
    assert m["antisymmetry"]["swapped_accuracy"] == pytest.approx(1 - m["accuracy"] - m["margin"]["tie_rate"])
    assert [t["threshold"] for t in m["near_ties"]] == [0.05, 0.1, 0.2, 0.5]
    assert "best-of-N" in r.output and "pairwise accuracy" in r.output


def test_adamw_default_recipe_runs_and_is_reproducible(embedded, tmp_path):
    data, model, cache = embedded
    for name in ("a", "b"):
        r = run("fit-head", "--data", data, "--model", model, "--cache-dir", cache,
                "--out", tmp_path / f"{name}.pt", "--eval-split", "", "-q")
        assert r.exit_code == 0, r.output
    a, b = Head.load(tmp_path / "a.pt"), Head.load(tmp_path / "b.pt")
    assert (a.weight == b.weight).all() and a.meta["config"]["steps"] == 800 and a.meta["config"]["lr"] == 2e-5


def test_missing_vectors_name_the_embed_command(tiny_opt_dir, pointwise_dir, tmp_path):
    r = run("fit-head", "--data", pointwise_dir, "--model", tiny_opt_dir, "--cache-dir", tmp_path / "empty", "-q")
    assert r.exit_code == 1 and "run first: orm-cache embed" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_head_refuses_vectors_of_another_encoder(embedded, tmp_path):
    data, model, cache = embedded
    head = tmp_path / "h.pt"
    assert run("fit-head", "--data", data, "--model", model, "--cache-dir", cache, "--out", head,
               "--solver", "lbfgs", "-q").exit_code == 0
    h = Head.load(head)
    h.meta["fingerprint"] = "0" * 64  # as if trained on another encoder
    h.save(head)
    r = run("eval", "--head", head, "--data", data, "--split", "test", "--cache-dir", cache)
    assert r.exit_code == 1 and "no vectors of the head's encoder 0000000000000000" in r.output
    from orm_cache.pipeline.bind import store_for_head
    from orm_cache.store import VectorStore, list_stores

    s = list_stores(cache)[0]
    with pytest.raises(StoreError, match="trained on encoder 0000000000000000 but these vectors are from encoder"):
        h.check_store(VectorStore(s["dir"], s["fingerprint"]))
    assert store_for_head  # imported for the message above


def test_stage2_never_imports_transformers(embedded, tmp_path):
    data, model, cache = embedded
    code = (
        "import sys; from click.testing import CliRunner; from orm_cache.cli import cli\n"
        f"r = CliRunner().invoke(cli, ['fit-head', '--data', {str(data)!r}, '--model', {str(model)!r}, "
        f"'--cache-dir', {str(cache)!r}, '--out', {str(tmp_path / 'h.pt')!r}, '--solver', 'lbfgs', '-q'])\n"
        "assert r.exit_code == 0, r.output\n"
        f"r = CliRunner().invoke(cli, ['eval', '--head', {str(tmp_path / 'h.pt')!r}, '--data', {str(data)!r}, "
        f"'--split', 'test', '--cache-dir', {str(cache)!r}, '-q'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'datasets', 'tokenizers')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_plot_dir_writes_pngs_or_says_how_to_get_matplotlib(embedded, tmp_path):
    import importlib.util

    data, model, cache = embedded
    head = tmp_path / "h.pt"
    assert run("fit-head", "--data", data, "--model", model, "--cache-dir", cache, "--out", head,
               "--solver", "lbfgs", "-q").exit_code == 0
    r = run("eval", "--head", head, "--data", data, "--split", "test", "--cache-dir", cache,
            "--plot-dir", tmp_path / "plots", "--bootstrap", 50, "-q")
    if importlib.util.find_spec("matplotlib") is None:
        assert r.exit_code == 1 and "pip install 'orm-cache[plot]'" in r.output
    else:
        assert r.exit_code == 0, r.output
        pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
        assert pngs == ["accuracy_by_length.png", "margins.png", "reliability.png"]
        assert all((tmp_path / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_pairwise_data_end_to_end(tiny_opt_dir, tmp_path):
    """The reference data's shape: chosen/rejected/meta, no labels, no groups."""
    from conftest import write_jsonl

    rows = [{"chosen": f"Step 1: {i} + {i} = {2 * i}. Answer: {2 * i}",
             "rejected": f"Step 1: {i} + {i} = {2 * i + 1}. Answer: {2 * i + 1}", "meta": {"id": i}}
            for i in range(60)]
    data = tmp_path / "pairs"
    write_jsonl(data / "train.jsonl", rows[:40])
    write_jsonl(data / "validation.jsonl", rows[40:50])
    write_jsonl(data / "test.jsonl", rows[50:])
    cache, head = tmp_path / "c", tmp_path / "h.pt"
    for split in ("train", "validation", "test"):
        r = run("embed", "--data", data, "--split", split, "--model", tiny_opt_dir, "--cache-dir", cache, "-q")
        assert r.exit_code == 0 and "(pairwise)" in r.output, r.output
    assert run("fit-head", "--data", data, "--model", tiny_opt_dir, "--cache-dir", cache, "--out", head,
               "-q").exit_code == 0
    out = tmp_path / "m.json"
    r = run("eval", "--head", head, "--data", data, "--split", "test", "--cache-dir", cache, "--json", out, "-q")
    assert r.exit_code == 0, r.output
    m = json.loads(out.read_text())
    assert m["pairs"] == 10 and m["ci"]["unit"] == "pair" and "pointwise" not in m and "best_of_n" not in m


def test_reference_format_head_is_evaluated_with_store_prefix(embedded, tmp_path):
    """A published head (only model_state) scores a store named with --store FINGERPRINT."""
    import torch

    from orm_cache.store import list_stores

    data, model, cache = embedded
    trained = tmp_path / "h.pt"
    assert run("fit-head", "--data", data, "--model", model, "--cache-dir", cache, "--out", trained,
               "--solver", "lbfgs", "-q").exit_code == 0
    imported = tmp_path / "reference.pt"
    torch.save({"model_state": torch.load(trained, weights_only=True)["model_state"]}, imported)
    args = ["eval", "--head", imported, "--data", data, "--split", "test", "--cache-dir", cache, "--calibrate-on", ""]
    r = run(*args)
    assert r.exit_code == 1 and "name the store of its encoder with --store" in r.output
    fp = list_stores(cache)[0]["fingerprint"]
    r = run(*args, "--store", fp[:10], "--feature", "last@-1")
    assert r.exit_code == 0, r.output
    original = run("eval", "--head", trained, "--data", data, "--split", "test", "--cache-dir", cache, "-q")
    line = [x for x in r.output.splitlines() if "pairwise accuracy" in x][0]
    assert line in original.output  # the same weights score the same vectors the same way
    r = run(*args, "--store", "ffff")
    assert r.exit_code == 1 and "--store 'ffff' matches 0 stores" in r.output
