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
from orm_cache.live import LiveScorer

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
    from orm_cache.encode.identity import EncoderError
    from orm_cache.head import CheckpointError
    from orm_cache.head.export import ExportError
    from orm_cache.outputs import OutputError
    from orm_cache.store import StoreError

    for cls in (ConfigConflict, EncoderError, CheckpointError, ExportError, OutputError, StoreError,
                errors.DataError, errors.RecipeError, errors.ConfigError):
        assert issubclass(cls, errors.UserError) and getattr(errors, cls.__name__) is cls
    with pytest.raises(errors.ConfigError, match="solver='sgd' is not one of"):
        from orm_cache.config import HeadConfig
        HeadConfig(solver="sgd")


def test_a_bug_keeps_its_traceback_and_a_user_error_is_one_line(world, monkeypatch):
    import orm_cache.stage2 as stage2

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
    import orm_cache.rescore as rescore

    inp = write_jsonl(tmp_path / "in.jsonl", pointwise_rows(2))
    before = inp.read_bytes()
    monkeypatch.setattr(rescore.Head, "load", lambda *a: pytest.fail("the head was read"))
    extra = ("--group-by", "group") if command == "rank" else ()
    for out in (inp, tmp_path / "." / "in.jsonl"):
        r = run(command, "--head", world["head"], "--input", inp, "--output", out, "--cache-dir", world["cache"], *extra)
        assert "is the input this command reads" in one_line(r)
    assert inp.read_bytes() == before
