"""Nothing silently wrong (issue 22): user errors are one line and bugs keep their traceback,
default checkpoint names never collide, every vector a command uses is checked, input has one
meaning or is refused, a score does not depend on how the rows were chunked."""

import json
import shutil
import types
from pathlib import Path

import numpy as np
import pytest

from orm_cache import errors
from orm_cache.pipeline.live import LiveScorer

from conftest import ok, pointwise_rows, run, write_jsonl, write_pointwise_splits


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_opt_dir):
    """A tiny OPT store of the three pointwise splits, and a linear head."""
    root = tmp_path_factory.mktemp("silent")
    model = root / "model"
    shutil.copytree(tiny_opt_dir, model)
    data = write_pointwise_splits(root / "data")
    cache, head = root / "cache", root / "head.pt"
    for split in ("train", "validation", "test"):
        ok("embed", "--data", data, "--split", split, "--model", model, "--cache-dir", cache, "--pooling", "last",
           "-q")
    ok("fit-head", "--data", data, "--model", model, "--cache-dir", cache, "--out", head, "--solver", "lbfgs", "-q")
    return {"root": root, "model": model, "data": data, "cache": cache, "head": head}


def one_line(r):
    """A refusal: exit 1, no traceback, the message on one line."""
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output and r.output.startswith("Error: ") and r.output.count("\n") == 1, r.output
    return r.output


# ------------------------------------------------------------------ item 5: errors, names, prefer

def test_user_errors_share_one_base_and_old_locations_still_import():
    from orm_cache.config import ConfigConflict
    from orm_cache.models import EncoderError
    from orm_cache.head import CheckpointError
    from orm_cache.pipeline.export import ExportError
    from orm_cache.outputs import OutputError
    from orm_cache.store import StoreError

    for cls in (ConfigConflict, EncoderError, CheckpointError, ExportError, OutputError, StoreError,
                errors.DataError, errors.RecipeError, errors.ConfigError):
        assert issubclass(cls, errors.UserError) and getattr(errors, cls.__name__) is cls
    with pytest.raises(errors.ConfigError, match="--solver 'sgd' is not one of"):
        from orm_cache.config import HeadConfig
        HeadConfig(solver="sgd")


def test_a_bug_keeps_its_traceback_and_a_user_error_is_one_line(world, monkeypatch):
    import orm_cache.pipeline.evaluate as stage2

    def bug(*a, **k):
        raise ValueError("operands could not be broadcast together with shapes (3,) (4,)")

    monkeypatch.setattr(stage2, "evaluate_split", bug)
    r = run("eval", "--head", world["head"], "--data", world["data"], "--split", "test", "--cache-dir", world["cache"])
    assert r.exit_code == 1 and isinstance(r.exception, ValueError) and "broadcast" in str(r.exception)
    assert "Error: operands" not in r.output  # not dressed up as the user's mistake

    def refusal(*a, **k):
        raise errors.StoreError("shard x.arrow is damaged")

    monkeypatch.setattr(stage2, "evaluate_split", refusal)
    r = run("eval", "--head", world["head"], "--data", world["data"], "--split", "test", "--cache-dir", world["cache"])
    assert one_line(r) == "Error: shard x.arrow is damaged\n"


def test_default_checkpoint_names_never_collide_and_an_existing_head_is_kept(world, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(world["cache"], cache)
    common = ("--data", world["data"], "--model", world["model"], "--cache-dir", cache, "--eval-split", "", "-q")
    heads = cache / "heads"
    ok("fit-head", *common, "--steps", "5")
    first = sorted(heads.glob("*.pt"))
    assert len(first) == 1 and "-linear-pairwise-adamw-seed0-" in first[0].name
    before = first[0].read_bytes()
    for extra in (("--head", "mlp", "--hidden", "4"), ("--objective", "pointwise"), ("--ensemble", "2"),
                  ("--lr", "1e-3")):
        ok("fit-head", *common, "--steps", "5", *extra)
    names = sorted(p.name for p in heads.glob("*.pt"))
    assert len(names) == 5, names
    assert any("-mlp-" in n for n in names) and any("-linearx2-" in n for n in names)
    assert any("-pointwise-" in n for n in names)
    assert first[0].read_bytes() == before  # the linear head was not replaced
    # the same configuration and data again: refused before training, unless asked
    out = one_line(run("fit-head", *common, "--steps", "5"))
    assert str(first[0]) in out and "--overwrite" in out
    assert first[0].read_bytes() == before
    ok("fit-head", *common, "--steps", "5", "--overwrite")
    assert len(list(heads.glob("*.pt"))) == 5
    # sweeps: a different grid is a different default name; the same sweep is refused
    ok("sweep", *common[:-3], "--grid", "l2=0.1,1", "--solver", "lbfgs", "-q")
    ok("sweep", *common[:-3], "--grid", "l2=0.5,2", "--solver", "lbfgs", "-q")
    assert len(list(heads.glob("sweep-best-*.pt"))) == 2
    one_line(run("sweep", *common[:-3], "--grid", "l2=0.1,1", "--solver", "lbfgs", "-q"))


def test_prefer_is_0_or_1_for_a_huge_gap_instead_of_overflowing():
    def scorer(sa, sb, T=None):
        return types.SimpleNamespace(score=lambda texts, prompts: (np.float32(sa), np.float32(sb)),
                                     head=types.SimpleNamespace(temperature=T))

    assert LiveScorer.prefer(scorer(1e4, -1e4), "a", "b") == 1.0
    assert LiveScorer.prefer(scorer(-1e4, 1e4), "a", "b") == 0.0
    assert LiveScorer.prefer(scorer(3e38, -3e38, T=0.01), "a", "b") == 1.0
    assert LiveScorer.prefer(scorer(1.0, 0.0, T=2.0), "a", "b") == pytest.approx(1 / (1 + np.exp(-0.5)))


# ------------------------------------------------------------------ item 4: one line, never a traceback

@pytest.fixture(scope="module")
def reward_model(tmp_path_factory, tiny_opt_dir):
    """An OPTForSequenceClassification reward model saved both as safetensors and as a torch zip."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    root = tmp_path_factory.mktemp("rm")
    cfg = AutoConfig.from_pretrained(tiny_opt_dir, num_labels=1)
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_opt_dir, config=cfg)
    model.save_pretrained(root / "st")
    AutoTokenizer.from_pretrained(tiny_opt_dir).save_pretrained(root / "st")
    shutil.copytree(root / "st", root / "bin")
    (root / "bin" / "model.safetensors").unlink()
    torch.save(model.state_dict(), root / "bin" / "pytorch_model.bin")
    return {"st": root / "st", "bin": root / "bin"}


def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_import_head_refuses_a_truncated_safetensors_in_one_line(reward_model, tmp_path, keep):
    d = tmp_path / "rm"
    shutil.copytree(reward_model["st"], d)
    _truncate(d / "model.safetensors", keep)
    out = one_line(run("import-head", "--model", d, "--out", tmp_path / "h.pt", "--cache-dir", tmp_path / "c"))
    assert "model.safetensors: not a complete safetensors file" in out
    assert not (tmp_path / "h.pt").exists()


def test_import_head_refuses_a_truncated_or_pickled_bin_without_unpickling(reward_model, tmp_path, monkeypatch):
    import pickle

    import torch

    ok("import-head", "--model", reward_model["bin"], "--out", tmp_path / "fine.pt", "--cache-dir", tmp_path / "c")
    d = tmp_path / "rm"
    shutil.copytree(reward_model["bin"], d)
    _truncate(d / "pytorch_model.bin", 0.7)
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    out = one_line(run("import-head", "--model", d, "--out", tmp_path / "h.pt", "--cache-dir", tmp_path / "c"))
    assert "pytorch_model.bin: not a complete torch zip checkpoint" in out and loads == []
    # a legacy pickle whose unpickling would run code: refused, never unpickled
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (d / "pytorch_model.bin").write_bytes(pickle.dumps({"score.weight": Evil()}))
    out = one_line(run("import-head", "--model", d, "--out", tmp_path / "h.pt", "--cache-dir", tmp_path / "c"))
    assert "legacy pickle, which import-head never unpickles" in out and loads == [] and not marker.exists()
    # a torch zip whose pickle refers to code: weights_only refuses it, in one line
    torch.save({"score.weight": torch.ones(1, 64), "x": types.SimpleNamespace(a=1)}, d / "pytorch_model.bin")
    out = one_line(run("import-head", "--model", d, "--out", tmp_path / "h.pt", "--cache-dir", tmp_path / "c"))
    assert "pytorch_model.bin: refused" in out and not (tmp_path / "h.pt").exists()


def test_a_checkpoint_from_a_newer_format_or_with_a_wrong_member_count_is_refused(world, tmp_path):
    import torch

    ck = torch.load(world["head"], weights_only=True)
    for edit, needle in ((lambda c: c["orm_cache"].update(format_version=99), "checkpoint format 99 was written by a newer"),
                         (lambda c: c["orm_cache"].update(format_version="1"), "format_version '1' is not a version"),
                         (lambda c: c["orm_cache"]["head"].update(members=3), "records 3 member(s) but its tensors hold 1")):
        c = torch.load(world["head"], weights_only=True)
        edit(c)
        bad = tmp_path / "bad.pt"
        torch.save(c, bad)
        out = one_line(run("eval", "--head", bad, "--data", world["data"], "--split", "test", "--cache-dir",
                           world["cache"]))
        assert needle in out, out
    assert ck["orm_cache"]["format_version"] == 1


def test_export_through_a_symlink_keeps_the_link_and_leaves_no_temporary(world, tmp_path):
    real, link = tmp_path / "exports" / "v1", tmp_path / "current"
    ok("export", "--head", world["head"], "--out", real)
    link.symlink_to(real, target_is_directory=True)
    before = sorted(p.name for p in real.iterdir())
    ok("export", "--head", world["head"], "--out", link)
    assert link.is_symlink() and Path(link.resolve()) == real.resolve()
    assert sorted(p.name for p in real.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "exports"]
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == ["v1"]
    # a file output through a link: the target is replaced, the link stays
    target, flink = tmp_path / "t.json", tmp_path / "l.json"
    target.write_text("old")
    flink.symlink_to(target)
    ok("eval", "--head", world["head"], "--data", world["data"], "--split", "test", "--cache-dir", world["cache"],
       "--json", flink, "-q")
    assert flink.is_symlink() and json.loads(target.read_text())


@pytest.mark.parametrize("command", ["score", "rank"])
def test_output_equal_to_input_is_refused_before_reading(world, tmp_path, command, monkeypatch):
    import orm_cache.pipeline.rescore as rescore

    inp = write_jsonl(tmp_path / "in.jsonl", pointwise_rows(2))
    before = inp.read_bytes()
    monkeypatch.setattr(rescore.Head, "load", lambda *a: pytest.fail("the head was read"))
    extra = ("--group-by", "group") if command == "rank" else ()
    for out in (inp, tmp_path / "." / "in.jsonl"):
        r = run(command, "--head", world["head"], "--input", inp, "--output", out, "--cache-dir", world["cache"], *extra)
        assert "is the input this command reads" in one_line(r)
    assert inp.read_bytes() == before


# ------------------------------------------------------------------ item 2: one meaning, or refused

def _load(data, split="train", **kw):
    from orm_cache.config import DataSpec
    from orm_cache.data import load_split

    return load_split(DataSpec(data=str(data), split=split, **kw))


def test_a_split_column_on_some_rows_only_is_refused_naming_the_row(tmp_path):
    rows = pointwise_rows(4)
    for r in rows[:8]:
        r["split"] = "train"
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    for split in ("train", "test"):
        with pytest.raises(errors.DataError, match=rf"d.jsonl:9: this row has no value in column 'split' but row 1 has one"):
            _load(f, split)
    rows[0].pop("split")  # the other way round: the first row has none
    write_jsonl(f, rows)
    with pytest.raises(errors.DataError, match=r"d.jsonl:2: this row has a value in column 'split' but row 1 has none"):
        _load(f, "test")


def test_a_split_no_row_has_is_refused_listing_the_present_ones(tmp_path):
    rows = pointwise_rows(4)
    for i, r in enumerate(rows):
        r["split"] = "train" if i < 8 else "test"
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    assert len(_load(f, "test").keys) == 8 and len(_load(f, "train").keys) == 8
    with pytest.raises(errors.DataError, match=r"no row has split 'tset'; its split column holds test, train"):
        _load(f, "tset")
    # a file without a split column is still used whole, whatever --split says (documented)
    plain = write_jsonl(tmp_path / "plain.jsonl", pointwise_rows(4))
    assert len(_load(plain, "anything").keys) == 16


def test_selection_or_report_on_the_training_rows_is_refused(world):
    one = write_jsonl(world["root"] / "one" / "all.jsonl", pointwise_rows(6))
    common = ("--data", one, "--model", world["model"], "--cache-dir", world["cache"], "--grid", "l2=0.1,1",
              "--solver", "lbfgs", "-q")
    out = one_line(run("sweep", *common, "--select-on", "validation"))
    assert "--select-on validation is the same rows as the training --split train" in out and "no split column" in out
    # --report-on: a directory whose test file is a copy of train
    d = world["root"] / "copied"
    write_pointwise_splits(d)
    shutil.copy(d / "train.jsonl", d / "test.jsonl")
    out = one_line(run("sweep", *common[:1], d, *common[2:], "--report-on", "test", "--refit"))
    assert "--report-on test is the same rows as the training --split train" in out
    assert not list((world["cache"] / "heads").glob("sweep-best-*"))  # refused before anything was trained


def test_a_json_object_with_a_key_twice_is_refused(tmp_path):
    f = tmp_path / "d.jsonl"
    good = json.dumps({"text": "fine", "label": 1, "group": "a"})
    f.write_text(good + '\n{"text": "good", "text": "evil", "label": 1, "label": 0}\n')
    with pytest.raises(errors.DataError, match=r"d.jsonl:2: a JSON object names the key 'text' twice"):
        _load(f)
    nested = tmp_path / "n.json"  # a JSON array, and a duplicate inside a message
    nested.write_text('[{"messages": [{"role": "user", "content": "a", "content": "b"}], "label": 1}]')
    with pytest.raises(errors.DataError, match=r"n.json: a JSON object names the key 'content' twice"):
        _load(nested)
    csv = tmp_path / "d.csv"
    csv.write_text("text,label,text\nx,1,y\n")
    with pytest.raises(errors.DataError, match=r"d.csv:1: the header names column 'text' twice"):
        _load(csv)


def test_one_split_in_two_formats_is_refused_and_hub_shards_are_one_split(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = write_pointwise_splits(tmp_path / "d")
    pq.write_table(pa.Table.from_pylist(pointwise_rows(3, seed=9)), d / "train.parquet")
    with pytest.raises(errors.DataError, match=r"split 'train' is given 2 ways \(train.jsonl; train.parquet\)"):
        _load(d)
    (d / "train.parquet").unlink()
    (d / "dev.jsonl").write_text((d / "validation.jsonl").read_text())
    with pytest.raises(errors.DataError, match=r"split 'validation' is given 2 ways"):
        _load(d, "validation")
    h = tmp_path / "hub" / "data"
    rows = pointwise_rows(6)
    h.mkdir(parents=True)
    for i in range(3):
        pq.write_table(pa.Table.from_pylist(rows[8 * i:8 * i + 8]), h / f"train-0000{i}-of-00003.parquet")
    assert len(_load(h.parent).keys) == 24


@pytest.mark.parametrize("groups, needle", [
    ((1, "1"), "holds the string '1', but"),
    ((1, True), "holds a boolean (True)"),
    ((1, 2.5), "holds a floating-point number (2.5)"),
    (("a", {"id": 1}), "holds an object ({'id': 1})"),
    (("a", ["x"]), "holds a list (['x'])"),
])
def test_group_ids_follow_one_rule_in_every_command(world, tmp_path, groups, needle):
    rows = pointwise_rows(2)
    first = [r["group"] == "p0" for r in rows]
    for r, f0 in zip(rows, first):
        r["group"] = groups[0] if f0 else groups[1]
    f = write_jsonl(tmp_path / "g.jsonl", rows)
    with pytest.raises(errors.DataError, match=r"g.jsonl:5: group column 'group' " + needle[:12]):
        _load(f)
    out = one_line(run("eval", "--head", world["head"], "--data", f, "--cache-dir", world["cache"]))
    assert "g.jsonl:5: group column 'group'" in out and ("must be a string or an integer" in out or "one type" in out)
    out = one_line(run("rank", "--head", world["head"], "--input", f, "--output", tmp_path / "r.jsonl",
                       "--group-by", "group", "--cache-dir", world["cache"]))
    assert "g.jsonl:5: group column 'group'" in out
    # one type per column is fine, and then every command groups alike
    for r, f0 in zip(rows, first):
        r["group"] = 7 if f0 else 8
    write_jsonl(f, rows)
    assert set(_load(f).groups) == {7, 8}


def test_a_malformed_line_under_skip_invalid_is_set_aside_like_any_bad_row(world, tmp_path):
    rows = pointwise_rows(2)
    f = tmp_path / "in.jsonl"
    lines = [json.dumps(r) for r in rows]
    lines[2] = '{"text": "cut off'
    lines[4] = '{"text": "twice", "text": "again", "label": 1, "group": "p1"}'
    lines[5] = json.dumps({"text": "bad \udc80 here", "label": 0, "group": "p1"})
    f.write_text("\n".join(lines) + "\n")
    out = one_line(run("score", "--head", world["head"], "--input", f, "--output", tmp_path / "o.jsonl",
                       "--cache-dir", world["cache"]))
    assert "in.jsonl:3: malformed JSON" in out
    r = ok("score", "--head", world["head"], "--input", f, "--output", tmp_path / "o.jsonl", "--cache-dir",
           world["cache"], "--skip-invalid")
    assert "rejected 3 invalid rows" in r.output, r.output
    scored = [json.loads(x) for x in open(tmp_path / "o.jsonl")]
    assert len(scored) == len(rows) - 3
    side = [json.loads(x) for x in open(tmp_path / "o.jsonl.rejected.jsonl")]
    assert [s["row"] for s in side] == [3, 5, 6]
    assert "malformed JSON" in side[0]["reason"] and "names the key 'text' twice" in side[1]["reason"]
    assert "cannot be encoded as UTF-8" in side[2]["reason"] and "in.jsonl:6" in side[2]["reason"]


def test_text_that_cannot_be_utf8_is_named_by_row(tmp_path):
    rows = pointwise_rows(2)
    f = tmp_path / "d.jsonl"
    lines = [json.dumps(r) for r in rows]
    lines[3] = json.dumps({"text": "x \ud800 y", "label": 0, "group": "p0"})
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(errors.DataError, match=r"d.jsonl:4: text cannot be encoded as UTF-8 \('x ' followed by an "
                                               r"unpaired surrogate U\+D800\)"):
        _load(f)
    # a surrogate pair written as escapes is a real character and is fine
    lines[3] = json.dumps({"text": "x \U0001F600 y", "label": 0, "group": "p0"})
    f.write_text("\n".join(lines) + "\n")
    assert "x \U0001F600 y" in _load(f).texts.values()
    from orm_cache.data import trace_key
    with pytest.raises(errors.DataError, match="unpaired surrogate U\\+D800"):
        trace_key("abc\ud800")


# ------------------------------------------------------------------ item 6: messages say what is wrong

@pytest.mark.parametrize("solver", ["adamw", "lbfgs"])
def test_non_finite_training_vectors_are_named_not_blamed_on_the_lr(solver):
    from orm_cache.config import HeadConfig
    from orm_cache.head import train
    from orm_cache.head.train import check_trained

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 8)).astype(np.float32)
    X[[3, 17]] = np.nan
    ci, ri = np.arange(0, 40, 2), np.arange(1, 40, 2)
    res = train(X, ci, ri, HeadConfig(solver=solver, steps=20))
    with pytest.raises(errors.StoreError, match="2 of the 40 training vectors hold NaN or Inf: the store is damaged, "
                                                "training did not diverge"):
        check_trained(res, X)


def test_eval_by_group_explains_that_the_group_is_the_problem_id(world):
    out = one_line(run("eval", "--head", world["head"], "--data", world["data"], "--split", "test", "--cache-dir",
                       world["cache"], "--by", "group"))
    assert "'group' is the group column, the problem id each candidate answers" in out and "rank --group-by" in out


@pytest.mark.parametrize("args, flag", [
    (("fit-head", "--lr", "-1"), "--lr -1.0 must be positive"),
    (("fit-head", "--steps", "0"), "--steps 0 must be positive"),
    (("fit-head", "--betas", "0.9,1.5"), "--betas"),
    (("fit-head", "--negatives", "0"), "--negatives 0 must be at least 1"),
    (("score", "--chunk-rows", "0"), "'--chunk-rows': 0 is not in the range"),
])
def test_a_bad_option_value_names_the_option(world, tmp_path, args, flag):
    if args[0] == "score":
        inp = write_jsonl(tmp_path / "in.jsonl", pointwise_rows(1))
        extra = ("--head", world["head"], "--input", inp, "--output", tmp_path / "o.jsonl", "--cache-dir", world["cache"])
    else:
        extra = ("--data", world["data"], "--model", world["model"], "--cache-dir", world["cache"], "--out",
                 tmp_path / "h.pt")
    r = run(*args, *extra)
    assert r.exit_code in (1, 2) and "Traceback" not in r.output and flag in r.output, r.output


# ------------------------------------------------------------------ item 3: a score is a function of text and head

def test_cached_scores_are_bit_identical_whatever_the_chunking_order_or_door(world, tmp_path):
    from orm_cache.data.ingest import trace_key
    from orm_cache.head import Head
    from orm_cache.store import VectorStore, store_dir

    rows = [r for name in ("train", "validation", "test")
            for r in map(json.loads, open(world["data"] / f"{name}.jsonl"))]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    rev = write_jsonl(tmp_path / "rev.jsonl", rows[::-1])
    common = ("--head", world["head"], "--cache-dir", world["cache"], "-q")

    def scores(path, out, *extra, command="score"):
        r = ok(command, *common, "--input", path, "--output", out, *extra)
        assert "0 embedded now" in r.output or "embedded" not in r.output, r.output
        return {trace_key(x["text"]): np.float32(x["score"]) for x in map(json.loads, open(out))}

    want = scores(inp, tmp_path / "a.jsonl", "--chunk-rows", "1000")
    for chunk in ("1", "7", "13", "50"):
        got = scores(inp, tmp_path / f"c{chunk}.jsonl", "--chunk-rows", chunk)
        assert all(got[k].tobytes() == want[k].tobytes() for k in want), chunk
    got = scores(rev, tmp_path / "rev-out.jsonl", "--chunk-rows", "7")
    assert all(got[k].tobytes() == want[k].tobytes() for k in want)
    got = scores(rev, tmp_path / "rank.jsonl", "--group-by", "group", command="rank")
    assert all(got[k].tobytes() == want[k].tobytes() for k in want)
    # the library: one vector at a time, or all at once, in any order
    head = Head.load(world["head"])
    vs = VectorStore(store_dir(world["cache"], head.fingerprint), head.fingerprint)
    keys = list(want)
    X = vs.matrix_at(vs.locate(keys), head.feature).to_numpy()
    for k, x in zip(keys, X):
        assert head.score(x[None])[0].tobytes() == want[k].tobytes()
    perm = np.random.default_rng(0).permutation(len(keys))
    assert head.score(X[perm]).tobytes() == np.array([want[keys[i]] for i in perm], np.float32).tobytes()


# ------------------------------------------------------------------ item 1: every vector used is checked

def _damaged_copy(world, tmp_path):
    """A copy of the world's cache whose shards are remembered as verified (verified.json), then
    one vector of the test split rewritten in place with the shard's size and mtime kept."""
    import os

    from orm_cache.data.ingest import trace_key
    from orm_cache.head import Head
    from orm_cache.store import VectorStore, shards, store_dir

    cache = tmp_path / "cache"
    shutil.copytree(world["cache"], cache)
    head = Head.load(world["head"])
    d = store_dir(cache, head.fingerprint)
    (d / shards.VERIFIED).write_text(json.dumps({p.name: shards._stat_key(p) for p in shards.list_shards(d)}))
    key = trace_key(json.loads(open(world["data"] / "test.jsonl").readline())["text"])
    vs = VectorStore(d, head.fingerprint)
    stored = vs.matrix([key], head.feature).parts[0].dtype  # float32 on a CPU
    vec = vs.vectors([key], head.feature, dtype=stored)[0]
    for path in shards.list_shards(d):
        data = bytearray(path.read_bytes())
        at = data.find(vec.tobytes())
        if at >= 0:
            st = path.stat()
            patch = (vec[:4] * stored.type(-1.5)).tobytes()  # finite, plausible, wrong
            data[at:at + len(patch)] = patch
            path.write_bytes(bytes(data))
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
            return cache, path
    raise AssertionError("vector not found")


def test_a_shard_changed_in_place_with_size_and_mtime_kept_stops_the_command_naming_it(world, tmp_path):
    cache, bad = _damaged_copy(world, tmp_path)
    before = ok("eval", "--head", world["head"], "--data", world["data"], "--split", "test", "--cache-dir",
                world["cache"], "-q")
    assert "accuracy" in before.output
    out = one_line(run("eval", "--head", world["head"], "--data", world["data"], "--split", "test", "--cache-dir",
                       cache, "-q"))
    assert f"shard {bad}" in out and "do not match the checksum written with them" in out
    inp = write_jsonl(tmp_path / "in.jsonl", [json.loads(x) for x in open(world["data"] / "test.jsonl")])
    out = one_line(run("score", "--head", world["head"], "--input", inp, "--output", tmp_path / "o.jsonl",
                       "--cache-dir", cache, "-q"))
    assert bad.name in out and not (tmp_path / "o.jsonl").exists()
    out = one_line(run("fit-head", "--data", world["data"], "--split", "test", "--model", world["model"],
                       "--cache-dir", cache, "--out", tmp_path / "h.pt", "--eval-split", "", "-q"))
    assert bad.name in out and not (tmp_path / "h.pt").exists()
    # a command that uses no vector of the damaged block is not stopped by it
    out = ok("eval", "--head", world["head"], "--data", world["data"], "--split", "train", "--cache-dir", cache, "-q")
    # cache check names it, compact quarantines it; afterwards the rows are simply missing (embed again)
    r = run("cache", "check", "--cache-dir", cache)
    assert r.exit_code == 1 and f"BAD {bad}" in r.output
    r = ok("cache", "compact", "--cache-dir", cache)
    assert f"moved {bad.name} to corrupt/" in r.output and not bad.exists()


def test_a_shard_without_block_checksums_stays_readable_and_is_checked_whole(tmp_path):
    import zlib

    import pyarrow as pa

    from orm_cache.store import ShardWriter, VectorStore, shards
    from orm_cache.store.blocks import META_BLOCKS

    d = tmp_path / "s"
    d.mkdir()
    w = ShardWriter(d, "f" * 64, {"schema_version": 1}, ("last@-1",), 4, "float16", shard_rows=100)
    X = np.arange(12, dtype=np.float16).reshape(3, 4)
    w.add(["a" * 64, "b" * 64, "c" * 64], np.ones(3), np.zeros(3, bool), {"last@-1": X})
    new = w.flush()
    table = pa.ipc.open_file(pa.memory_map(str(new))).read_all()
    assert META_BLOCKS in table.schema.metadata
    # the same rows as an older orm-cache wrote them: one batch, no block checksums
    old_schema = table.schema.with_metadata({**{k: v for k, v in table.schema.metadata.items() if k != META_BLOCKS},
                                             b"orm_cache.schema_version": b"1"})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, old_schema) as writer:
        writer.write_table(table.cast(old_schema))
    data = sink.getvalue().to_pybytes()
    new.unlink()
    old = d / f"0000-old.{zlib.crc32(data):08x}.arrow"
    old.write_bytes(data)
    vs = VectorStore(d, "f" * 64)
    assert vs.skipped == [] and vs.vectors(["b" * 64], dtype=np.float16).tolist() == [X[1].tolist()]
    damaged = bytearray(data)
    at = damaged.find(X[1].tobytes())
    damaged[at] ^= 1
    old.write_bytes(bytes(damaged))  # a new mtime: the whole-file checksum is read again and fails
    with pytest.warns(UserWarning, match="checksum mismatch"):
        vs = VectorStore(d, "f" * 64)
    assert "b" * 64 not in vs


def _rewrite_in_place(path, edit):
    """Apply ``edit(bytearray)`` to a shard's bytes and restore its size and mtime (bit rot)."""
    import os

    st = path.stat()
    data = bytearray(path.read_bytes())
    edit(data)
    assert len(data) == st.st_size
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("damage", ["swap two keys", "footer's block checksum key"])
def test_damage_outside_the_vectors_is_caught_too(tmp_path, damage):
    """Keys (which vector a text gets), token counts and the block-checksum entry itself are
    checked when a remembered shard is opened: a shard changed there is left out, named."""
    import warnings

    from orm_cache.store import ShardWriter, VectorStore
    from orm_cache.store.blocks import META_BLOCKS

    d = tmp_path / "s"
    d.mkdir()
    w = ShardWriter(d, "f" * 64, {"schema_version": 2}, ("last@-1",), 4, "float16", shard_rows=100)
    keys = [c * 64 for c in "abcd"]
    w.add(keys, np.ones(4), np.zeros(4, bool), {"last@-1": np.arange(16, dtype=np.float16).reshape(4, 4)})
    shard = w.flush()
    import os
    import time

    os.utime(shard, ns=(time.time_ns() - 60 * 10**9,) * 2)  # old enough to be remembered as verified
    assert len(VectorStore(d, "f" * 64)) == 4  # verified whole once, remembered
    if damage == "swap two keys":
        _rewrite_in_place(shard, lambda b: b.__setitem__(slice(b.find(b"a" * 64), b.find(b"a" * 64) + 64), b"b" * 64)
                          or b.__setitem__(slice(b.find(b"b" * 64, b.find(b"b" * 64) + 64), b.find(b"b" * 64, b.find(b"b" * 64) + 64) + 64), b"a" * 64))
    else:
        _rewrite_in_place(shard, lambda b: b.__setitem__(slice(b.rfind(META_BLOCKS) + len(META_BLOCKS) - 1,
                                                               b.rfind(META_BLOCKS) + len(META_BLOCKS)), b"r"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vs = VectorStore(d, "f" * 64)
    assert len(vs) == 0 and vs.skipped and "changed after it was written" in vs.skipped[0][1] or \
        "block checksums are missing" in vs.skipped[0][1], vs.skipped
    assert any(str(shard) in str(w.message) for w in caught)


@pytest.mark.parametrize("args, says", [
    (("--bootstrap", "0"), "--bootstrap"), (("--ci", "1.5"), "--ci"), (("--ci", "nan"), "--ci"),
    (("--length-edges", "a"), "--length-edges"), (("--length-edges", "200,100"), "--length-edges"),
    (("--bootstrap-seed", "-1"), "--bootstrap-seed"), (("--pair-seed", "-1"), "--pair-seed"), (("--split", ""), "--split"),
])
def test_bad_eval_option_values_are_one_line(world, args, says):
    r = run("eval", "--head", world["head"], "--data", world["data"], "--cache-dir", world["cache"], *args)
    assert r.exit_code != 0 and says in r.output and "Traceback" not in r.output, r.output


def test_eval_json_onto_the_data_file_is_refused(world, tmp_path):
    import shutil

    data = tmp_path / "test.jsonl"
    shutil.copy(world["data"] / "test.jsonl", data)
    before = data.read_bytes()
    r = run("eval", "--head", world["head"], "--data", data, "--cache-dir", world["cache"], "--json", data)
    assert r.exit_code == 1 and "is the data file this command reads" in r.output and data.read_bytes() == before
