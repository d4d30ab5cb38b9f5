"""torchrun: 2 CPU processes (gloo) write one store with exactly the keys of a 1-process run."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from orm_cache.store import VectorStore, list_stores

from conftest import pointwise_rows, write_jsonl


def _store(cache):
    (s,) = list_stores(cache)
    return VectorStore(s["dir"], s["fingerprint"])


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process(tiny_opt_dir, tmp_path):
    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", pointwise_rows(40, per_group=4, seed=3))
    common = ["embed", "--data", str(data), "--model", str(tiny_opt_dir), "--device", "cpu", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "orm_cache", *common, "--cache-dir", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr
    for attempt in range(2):
        shutil.rmtree(tmp_path / "two", ignore_errors=True)
        two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                              "-m", "orm_cache", *common, "--cache-dir", str(tmp_path / "two")],
                             capture_output=True, text=True, env=env, timeout=300)
        # torch's gloo has (rarely, on a loaded machine) aborted a rank while tearing its threads down,
        # after the work; that crash is torch's, so it gets one more run, and anything else fails at once
        if two.returncode == 0 or "terminate called without an active exception" not in two.stderr:
            break
    assert two.returncode == 0, two.stderr[-3000:]
    assert "over 2 ranks" in two.stdout and two.stdout.count("store:") == 1  # rank 0 alone prints
    a, b = _store(tmp_path / "one"), _store(tmp_path / "two")
    assert a.fp == b.fp and len(b.shards) == 2  # one shard per rank, none shared
    keys = sorted(a.keys())
    assert keys == sorted(b.keys()) and len(keys) == 160
    np.testing.assert_allclose(a.vectors(keys), b.vectors(keys), atol=1e-5, rtol=0)


def test_num_shards_refused_under_torchrun(monkeypatch, tiny_opt_dir, pointwise_dir):
    from orm_cache.config import DataSpec, EncoderSpec, RunSpec
    from orm_cache.pipeline.embed import embed_split

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="under torchrun the ranks split it already"):
        embed_split(DataSpec(data=str(pointwise_dir)), EncoderSpec(model=str(tiny_opt_dir)),
                    RunSpec(num_shards=2, shard_index=0))
