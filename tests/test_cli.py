"""The CLI as a user meets it: env vars, one-line errors, exit codes, `python cli.py` and `-m`."""

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
from click.testing import CliRunner

from conftest import ok
from orm_cache.cli import cli

ROOT = Path(__file__).resolve().parents[1]


def run(*args, env=None):
    return CliRunner().invoke(cli, list(map(str, args)), env=env, catch_exceptions=False)


def test_embed_writes_one_row_per_distinct_text_and_env_vars_work(tiny_opt_dir, pointwise_dir, tmp_path):
    env = {"ORM_CACHE_MODEL": str(tiny_opt_dir), "ORM_CACHE_DIR": str(tmp_path / "c")}
    r = run("embed", "--data", pointwise_dir, "--split", "train", "-q", env=env)
    assert r.exit_code == 0, r.output
    assert "48 distinct texts" in r.output and "to embed: 48" in r.output
    shards = list((tmp_path / "c" / "vectors").glob("*/*.arrow"))
    keys = [k for s in shards for k in pa.ipc.open_file(str(s)).read_all().column("key").to_pylist()]
    assert len(keys) == len(set(keys)) == 48
    r = run("embed", "--data", pointwise_dir, "--split", "train", "-q", env=env)
    assert "cached already: 48   to embed: 0" in r.output
    info = run("cache", "info", "--cache-dir", tmp_path / "c")
    assert "48 texts" in info.output


def test_user_errors_are_one_line_without_traceback(tmp_path):
    r = CliRunner().invoke(cli, ["embed", "--data", str(tmp_path / "missing.jsonl"), "-q"])
    assert r.exit_code == 1
    assert r.output.strip().startswith("Error:") and "no such file" in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(cli, ["embed", "--no-such-flag"])
    assert r.exit_code == 2 and "No such option" in r.output
    r = CliRunner().invoke(cli, ["embed", "--dtype", "float8"])
    assert r.exit_code == 2 and "float8" in r.output


def test_missing_model_is_one_line(pointwise_dir, tmp_path):
    r = CliRunner().invoke(cli, ["embed", "--data", str(pointwise_dir), "--model", str(tmp_path / "nomodel"),
                                 "--cache-dir", str(tmp_path / "c"), "-q"])
    assert r.exit_code == 1 and "no such directory" in r.output and "Traceback" not in r.output


def test_entry_points_agree():
    for cmd in ([sys.executable, "cli.py", "--help"], [sys.executable, "-m", "orm_cache", "--help"]):
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
        assert "Stage 1" in out and "embed" in out


def test_config_file_sets_defaults_and_the_command_line_wins(tiny_opt_dir, pointwise_dir, tmp_path):
    cfg = tmp_path / "orm-cache.toml"
    cfg.write_text(f'data = "{pointwise_dir}"\nmodel = "{tiny_opt_dir}"\ncache-dir = "{tmp_path / "c"}"\n'
                   '[fit-head]\nsolver = "lbfgs"\n')
    ok("--config", cfg, "embed", "--split", "train,validation", "-q")
    r = ok("--config", cfg, "fit-head", "--out", tmp_path / "h.pt")
    assert "trained lbfgs head" in r.output
    r = ok("--config", cfg, "fit-head", "--solver", "adamw", "--steps", 5, "--out", tmp_path / "a.pt")
    assert "trained adamw head" in r.output
    r = ok("fit-head", "--config", cfg, "--out", tmp_path / "after.pt")  # after the command name too
    assert "trained lbfgs head" in r.output
    bad = tmp_path / "bad.toml"
    bad.write_text('modle = "x"\n')
    r = run("--config", bad, "cache", "info")
    assert r.exit_code == 1 and "'modle' is no option or command" in r.output
    bad.write_text('[fit-head]\nsolvr = "lbfgs"\n')
    r = run("--config", bad, "cache", "info")
    assert r.exit_code == 1 and "[fit-head] has no option 'solvr'" in r.output
    bad.write_text('data = [\n')
    r = run("--config", bad, "cache", "info")
    assert r.exit_code == 1 and "bad.toml" in r.output and "Traceback" not in r.output


def test_help_topics_list_every_option_of_their_spec():
    from orm_cache.config import DataSpec, EncoderSpec, HeadConfig, RunSpec

    for topic, spec in (("data", DataSpec), ("encoder", EncoderSpec), ("run", RunSpec), ("head", HeadConfig)):
        out = ok("help", topic).output
        for name in set(spec.__dataclass_fields__) - {"chat_tokens", "require_prompt", "keep_columns"}:
            flag = {"recipe_kind": "recipe", "step_prefixes": "steps"}.get(name, name)
            assert f"--{flag.replace('_', '-')}  [default:" in out, (topic, name)
    assert "[fit-head]" in ok("help", "config").output
    folded = ok("fit-head", "--help").output
    assert "--template" in folded.split("More options")[1] and "--chosen-col" not in folded.split("More options")[0]


def test_eval_evaluates_test_by_default(tiny_opt_dir, pointwise_dir, tmp_path):
    base = ("--data", pointwise_dir, "--model", tiny_opt_dir, "--cache-dir", tmp_path / "c")
    ok("embed", *base, "--split", "train,validation,test", "-q")
    ok("fit-head", *base, "--solver", "lbfgs", "--out", tmp_path / "h.pt", "-q")
    out = tmp_path / "r.json"
    ok("eval", "--head", tmp_path / "h.pt", "--data", pointwise_dir, "--cache-dir", tmp_path / "c", "--json", out)
    import json

    assert json.loads(out.read_text())["split"] == "test"
