"""Stage-2 commands: fit-head, sweep, eval, verify (cached vectors; verify loads the encoder)."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import DataSpec, EncoderSpec, HeadConfig, RunSpec
from .base import cli
from .options import (answer_options, answer_source, finite, _opt, build, cache_option, data_options, early_output_checks,
                      encoder_options, head_options, overwrite_option, override_recipe_option, quiet_option,
                      setup_logging, step_aggregate_option, store_option, train_on_option)


@cli.command("fit-head", short_help="Stage 2: train a head (linear, MLP, ensemble) on cached vectors.")
@data_options
@train_on_option
@encoder_options
@cache_option
@head_options
@store_option
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Checkpoint path [default: cache/heads/<fp>-<feature>-<head>-…-<digest>.pt].")
@overwrite_option
@click.option("--eval-split", default="validation", show_default=True,
              help="Split evaluated and calibrated on after training, when cached ('' to skip).")
@quiet_option
def fit_head_cmd(out, eval_split, store, overwrite, **kw):
    """Stage 2: train a head on cached vectors (no model is loaded).

    The defaults are the reference recipe (AdamW lr 2e-5, warm-up 50, batch 8, clip 1.0, 800
    steps); --solver lbfgs finds the exact minimiser of the loss + L2. --objective, --head and
    --ensemble choose other heads; --feature picks or concatenates stored columns. The head is
    evaluated and calibrated on --eval-split when it is cached (docs/heads.md).
    """
    from ..evaluate import format_report
    from ..pipeline.fit import fit_head

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
@train_on_option
@encoder_options
@cache_option
@head_options(base=True)
@store_option
@click.option("--grid", default=None, metavar="SPEC",
              help='field=v1,v2,… of any fit-head option, e.g. "solver=lbfgs l2=0.1,1,10 feature=last@-1,mean@-1"; '
                   '";" separates sub-grids.')
@click.option("--grid-file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="The grid as JSON (or YAML): field -> values, or a list of such sub-grids.")
@click.option("--select-on", default="validation", show_default=True, help="Split the configurations are ranked on.")
@click.option("--report-on", default=None, help="Evaluate only the selected head on this split (e.g. test).")
@click.option("--results", type=click.Path(dir_okay=False), default=None,
              help="Write every row to RESULTS.csv and RESULTS.json.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Checkpoint of the best head [default: cache/heads/sweep-best-<fp>-<digest>.pt].")
@overwrite_option
@click.option("--select-by", type=click.Choice(["accuracy", "loss"]), default="accuracy", show_default=True,
              help="Rank on accuracy (ties: loss) or on the pairwise log-loss (less noisy on small splits).")
@click.option("--refit", is_flag=True,
              help="Retrain the selected configuration on --split + --select-on together.")
@click.option("--top", type=click.IntRange(min=0), default=10, show_default=True, help="Leaderboard rows printed.")
@quiet_option
def sweep(grid, grid_file, select_on, report_on, results, out, top, store, quiet, select_by, refit, overwrite, **kw):
    """Train a grid of head configurations on cached vectors; pick the best on --select-on.

    Every fit-head option is a grid field; each distinct configuration trains once (AdamW ones
    batched as one weight matrix, lbfgs along the L2 path). Prints a leaderboard, saves the best
    head, and with --report-on evaluates only that head on a third split (docs/heads.md).
    """
    from ..evaluate import format_report
    from ..head.sweep import grid_fields, parse_grid
    from ..pipeline.fit import sweep_heads, sweep_table, write_sweep_results

    setup_logging(quiet)
    if bool(grid) == bool(grid_file):
        raise click.UsageError("give --grid or --grid-file (one of them)")
    g = parse_grid(grid, grid_file)
    for ext in (".csv", ".json") if results else ():
        early_output_checks(f"{results}{ext}", data_file=kw["data"] if Path(kw["data"]).is_file() else None)
    base = build(HeadConfig, kw)
    r = sweep_heads(build(DataSpec, kw), build(EncoderSpec, kw), base, g, kw["cache_dir"], select_on, report_on,
                    out, store, quiet, select_by, refit, overwrite=overwrite)
    rows = sweep_table(r.rows, select_on)
    varied = grid_fields(g)
    click.echo(f"{len(rows)} configuration{'' if len(rows) == 1 else 's'} in {r.seconds:.1f}s, ranked on {select_on} by {select_by}:")
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
@data_options(split="test")
@cache_option
@store_option
@click.option("--feature", default=None, help="Vector column [default: the head's].")
@click.option("--calibrate-on", default="validation", show_default=True,
              help="Split the temperature T of σ(Δ/T) is fitted on, when it is cached (else calibration is "
                   "reported for T = 1); name the evaluated split itself to fit on it; '' for none.")
@click.option("--save-calibration", is_flag=True,
              help="Write the fitted T into the checkpoint (rewritten atomically); without it the head is not touched.")
@override_recipe_option
@click.option("--ci", "ci_level", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.9,
              show_default=True, callback=finite, help="Bootstrap CI level.")
@click.option("--bootstrap", type=click.IntRange(min=1), default=1000, show_default=True, help="Bootstrap resamples.")
@click.option("--bootstrap-seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--length-edges", default="128,256", show_default=True, help="Token-length bucket edges.")
@click.option("--by", "by", multiple=True, metavar="COLUMN",
              help="Also report the headline per value of this metadata column (repeat for several): a "
                   "pairwise row's column, or for pointwise data the pair of its traces' values "
                   "(chosen=<v> / rejected=<v>) plus AUROC per trace value. Missing values are '(missing)'; "
                   "the 50 largest values are printed, --json has all.")
@answer_options(aggregate=False)
@step_aggregate_option
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write every metric here.")
@click.option("--plot-dir", type=click.Path(file_okay=False), default=None,
              help="Write PNG plots here (reliability, accuracy by length, margins; needs matplotlib).")
@quiet_option
def eval_cmd(head_path, store, feature, calibrate_on, save_calibration, override_recipe, ci_level, bootstrap,
             bootstrap_seed, length_edges, by, answer_col, answer_pattern, step_aggregate, json_path, plot_dir, quiet,
             **kw):
    """The reference card's metric table for a head, from cached vectors (test split by default).

    Pairwise accuracy with a bootstrap CI, margins, accuracy by length, the label-swap test,
    near-tie accuracy, calibration, and for pointwise data AUROC and best-of-N (with
    --answer-col/--answer-pattern: best, vote and weighted-vote); --by COLUMN per value of a
    metadata column (docs/evaluation.md).
    """
    from ..evaluate import format_report
    from ..outputs import write_json
    from ..pipeline.evaluate import evaluate_split

    setup_logging(quiet)
    early_output_checks(json_path, head=head_path, data_file=kw["data"] if Path(kw["data"]).is_file() else None)
    if plot_dir:
        from ..evaluate.plots import require_matplotlib

        require_matplotlib()
    r = evaluate_split(head_path, build(DataSpec, kw), kw["cache_dir"], calibrate_on or None, bootstrap,
                       ci_level, bootstrap_seed, length_edges_of(length_edges), store, feature, save_calibration,
                       override_recipe, by, answer_source(answer_col, answer_pattern), step_aggregate)
    click.echo(format_report(r))
    if save_calibration:
        click.echo(f"calibration T={r['calibration']['temperature']:.4g} saved into {head_path}")
    if json_path:
        write_json(json_path, r)
        click.echo(f"metrics: {json_path}")
    if plot_dir:
        from ..evaluate.plots import write_plots

        for p in write_plots(r, plot_dir):
            click.echo(f"plot: {p}")


@cli.command("likelihood", short_help="The card's data check: the frozen LM's log-likelihood against the labels.")
@data_options(split="validation")
@encoder_options
@cache_option
@store_option
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the table here.")
@quiet_option
def likelihood_cmd(store, json_path, quiet, **kw):
    """The reference card's data check, from cached vectors (no model loaded): the mean, min and
    sum of the response tokens' log-probabilities under the frozen causal LM (`embed
    --likelihood` stores them), positives against negatives, their Pearson and Spearman
    correlation with the label, and their pairwise accuracy as a scorer (docs/evaluation.md).
    """
    from ..evaluate.likelihood import format_likelihood
    from ..outputs import write_json
    from ..pipeline.evaluate import likelihood_report

    setup_logging(quiet)
    early_output_checks(json_path, data_file=kw["data"] if Path(kw["data"]).is_file() else None)
    r = likelihood_report(build(DataSpec, kw), build(EncoderSpec, kw), kw["cache_dir"], store)
    click.echo(format_likelihood(r))
    if json_path:
        write_json(json_path, r)
        click.echo(f"table: {json_path}")


@cli.command(short_help="Prove cached scores equal live end-to-end scores.")
@click.option("--head", "head_path", required=True, type=click.Path(dir_okay=False), help="Checkpoint (.pt).")
@data_options
@cache_option
@click.option("--sample", type=click.IntRange(min=1), default=64, show_default=True, help="Pairs re-scored live.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the sample.")
@click.option("--atol", type=click.FloatRange(min=0), default=None, callback=finite,
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
    """Prove cached scores equal live end-to-end scores (text -> tokenizer -> model -> head).

    Re-scores a seeded sample of pairs one text at a time and batched; exits non-zero when a
    trace is over tolerance, naming it.
    """
    from ..evaluate.verify import format_verify
    from ..outputs import write_json
    from ..pipeline.evaluate import verify_head

    setup_logging(quiet)
    early_output_checks(json_path, head=head_path, data_file=kw["data"] if Path(kw["data"]).is_file() else None)
    r = verify_head(head_path, build(DataSpec, kw), kw["cache_dir"], sample, seed, atol, device, batch_tokens,
                    store, feature, override_recipe)
    click.echo(format_verify(r.report))
    if json_path:
        write_json(json_path, r.report)
    if not r.ok:
        raise SystemExit(1)


def length_edges_of(value: str) -> tuple[int, ...]:
    """``--length-edges 128,256`` as increasing positive integers, else a one-line usage error."""
    try:
        edges = tuple(int(x) for x in value.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not comma-separated integers, e.g. 128,256",
                                 param_hint="--length-edges") from None
    if not edges or any(e <= 0 for e in edges) or list(edges) != sorted(set(edges)):
        raise click.BadParameter(f"{value!r} must be increasing positive token counts, e.g. 128,256",
                                 param_hint="--length-edges")
    return edges
