"""The CLI's shared options: each is a config field (its help is the field's docstring, its
environment variable ORM_CACHE_<NAME>), grouped by the spec it builds; rarely changed ones are
folded out of --help (:data:`FOLDED`) and explained by ``orm-cache help TOPIC``."""

from __future__ import annotations

import logging
import re
import signal  # noqa: F401
import sys
import warnings  # noqa: F401

import click

from ..config import HEAD_KINDS, OBJECTIVES, DataSpec, EncoderSpec, HeadConfig, RunSpec, field_docs

ENV = "ORM_CACHE"


# ------------------------------------------------------------------------------------ plumbing

class Terminated(KeyboardInterrupt):
    """SIGTERM (what Slurm, Kubernetes and `kill` send) raised like Ctrl-C, so every cleanup
    runs: embed flushes what it has embedded, no output file is replaced by a partial one."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _show_warning(message, category, filename, lineno, file=None, line=None):
    click.echo(f"warning: {message}", err=True)



# Options every command of a kind takes but few runs change: accepted everywhere, folded out of
# --help (listed by name at its end) and explained by `orm-cache help TOPIC`.
FOLDED = {
    "data": ("template", "chosen_col", "rejected_col", "text_col", "messages_col", "label_col", "group_col",
             "chat_template", "negatives", "pair_seed", "drop_duplicate_pairs", "step_pattern", "train_on"),
    "encoder": ("revision", "dtype", "max_length", "truncation_side", "pooling", "layers"),
    "run": ("batch_tokens", "max_batch_size", "chunk_texts", "shard_rows", "num_shards", "shard_index"),
    "head": ("betas", "weight_decay", "warmup_steps", "batch_size", "grad_clip", "init", "margin", "center_coef",
             "hidden", "ensemble_by", "lbfgs_max_iter"),
}
# --help's one line for the options it shows (the field's docstring, in `orm-cache help TOPIC`, says more)
SHORT_HELP = {
    "data": "Hub id, data file, directory of per-split files, or save_to_disk folder.",
    "split": "Split name (embed takes several: train,validation,test).",
    "prompt_col": "Column of the prompt, joined by the recipe where a row has one ('' for none) [default: prompt].",
    "recipe_kind": "How rows become texts: template, chat, trl or auto (orm-cache help data) [default: auto, "
                   "or the head's].",
    "model": "Hub id or local model directory; bundled-minilm is the packaged all-MiniLM-L6-v2, "
             "bundled-smollm2 the packaged SmolLM2-135M-Instruct (a decoder with a chat template).",
    "pooling": "Poolings stored per layer: last, mean, response_mean (comma-separated).",
    "layers": "Hidden-state layers to pool, comma-separated (-1 is the last).",
    "likelihood": "Also store logprob: the response's mean, min and sum token log-probability (a causal LM).",
    "cache_dir": "Root of the vector store.",
    "device": "auto (CUDA when available), cuda or cpu.",
    "solver": "adamw (the reference recipe) or lbfgs (exact minimiser of loss + L2).",
    "lr": "AdamW learning rate.",
    "steps": "AdamW optimiser steps.",
    "seed": "Seed of initial weights, batch order and bootstrap resamples.",
    "l2": "lbfgs: L2 penalty on the standardised-feature weights.",
    "feature": "Column(s), e.g. mean@-1, mean@-4+logprob, mean@-4+MODEL:mean@-16 [default: the store's first].",
    "objective": "pairwise (Bradley-Terry on pairs) or pointwise (logistic loss on labels).",
    "head": "linear (the reference checkpoint format) or mlp (one hidden ReLU layer).",
    "ensemble": "Members trained and averaged.",
}
TOPIC = {name: topic for topic, names in FOLDED.items() for name in names}
SPECS = {"data": DataSpec, "encoder": EncoderSpec, "run": RunSpec, "head": HeadConfig}


def first_sentence(doc: str) -> str:
    """The first sentence of a field's docstring (--help shows it; `orm-cache help TOPIC` the rest)."""
    m = re.match(r"(.+?[.:;])(\s|$)", doc)
    return m.group(1).rstrip(":;") + ("" if m.group(1).endswith(".") else ".") if m else doc


def _opt(cls, name, *decls, **kw):
    """An option whose help is the field's docstring and whose env var is ORM_CACHE_<NAME>;
    folded out of --help when it is one of :data:`FOLDED`."""
    kw.setdefault("help", SHORT_HELP.get(name) or first_sentence(field_docs(cls).get(name, "")))
    kw.setdefault("envvar", f"{ENV}_{name.upper()}")
    kw.setdefault("show_default", True)
    kw.setdefault("hidden", name in TOPIC)
    return click.option(*(decls or ("--" + name.replace("_", "-"),)), name, **kw)


def _command_config(ctx, param, path):
    """``COMMAND --config FILE``: this command's defaults from the file (an eager option, so it
    runs before the other options take their defaults)."""
    if path:
        from .configfile import config_defaults, load_config

        root = ctx.find_root()
        defaults = config_defaults(root.command, load_config(path), path)
        for name in ctx.command_path.split()[1:]:
            defaults = defaults.get(name, {})
        ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return path


class Command(click.Command):
    """A command whose --help ends with the folded options by topic (``orm-cache help TOPIC``),
    and that takes ``--config FILE`` after its name too (it is folded: every epilog names it)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.params.insert(0, click.Option(["--config"], type=click.Path(dir_okay=False, exists=True), hidden=True,
                                           is_eager=True, expose_value=False, callback=_command_config))

    def format_epilog(self, ctx, formatter):
        folded: dict[str, list[str]] = {}
        for p in self.get_params(ctx):
            topic = TOPIC.get(p.name) or next((t for t, spec in SPECS.items() if p.name in spec.__dataclass_fields__),
                                              None)
            if isinstance(p, click.Option) and p.hidden and topic:
                folded.setdefault(topic, []).append(p.opts[0])
        if folded:
            with formatter.section("More options (orm-cache help TOPIC explains them)"):
                formatter.write_dl([(topic, " ".join(names)) for topic, names in folded.items()])
        formatter.write_paragraph()
        formatter.write_text("Any option also reads ORM_CACHE_<OPTION> or a --config FILE (orm-cache help config).")
        super().format_epilog(ctx, formatter)


def _options(*opts):
    def deco(f):
        for o in reversed(opts):
            f = o(f)
        return f
    return deco


overwrite_option = click.option(
    "--overwrite", is_flag=True, help="Replace a head already at the default checkpoint path (else refused).")

chat_template_option = _opt(DataSpec, "chat_template", "--chat-template", default=None, show_default=False,
                            metavar="FILE")
recipe_option = _opt(DataSpec, "recipe_kind", "--recipe", default=None, show_default=False, envvar=f"{ENV}_RECIPE",
                     type=click.Choice(["auto", "template", "chat", "trl"]))


def data_options(f=None, split: str = DataSpec().split):
    """The data options; ``split``: the default --split of this command."""
    if f is None:
        return lambda g: data_options(g, split)
    d = DataSpec()
    return _options(
        _opt(DataSpec, "data", "--data", default=d.data),
        _opt(DataSpec, "split", "--split", default=split),
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
        _opt(DataSpec, "step_pattern", default=None, show_default=False, metavar="REGEX"),
    )(f)


steps_option = _opt(DataSpec, "step_prefixes", "--steps", is_flag=True, default=False, show_default=False,
                    show_envvar=True,
                    help="Also store the vector of every step prefix of each trace (steps: --step-pattern, a newline "
                         "by default), pooled from the trace's own forward pass (a causal encoder).")
train_on_option = _opt(DataSpec, "train_on", type=click.Choice(["traces", "prefixes"]), default="traces",
                       help="traces, or prefixes: every step prefix (and the trace) labelled with its trace's "
                            "outcome (embed --steps first).")
step_pattern_option = click.option("--step-pattern", default=None,
                                   envvar=f"{ENV}_STEP_PATTERN",
                                   metavar="REGEX", hidden=True,
                                   help="Delimiter between a response's steps (a regex) [default: the head's, else a line "
                                        "break].")
step_aggregate_option = click.option(
    "--step-aggregate", type=click.Choice(["last", "min", "mean", "product"]), default=None,
    help="Score each trace by its step prefixes' scores (embed --steps): the last, the lowest, their mean, or "
         "the product of σ(score) (summed as logs).")


def encoder_options(f=None, columns: bool = False):
    """The encoder options; ``columns``: --pooling and --layers are shown (embed, which stores
    them; a stage-2 command reads a column by --feature, so there they are folded)."""
    if f is None:
        return lambda g: encoder_options(g, columns)
    e = EncoderSpec()
    return _options(
        _opt(EncoderSpec, "model", default=e.model),
        _opt(EncoderSpec, "revision", default=None),
        _opt(EncoderSpec, "dtype", type=click.Choice(["auto", "float16", "bfloat16", "float32"]), default=e.dtype),
        _opt(EncoderSpec, "max_length", type=int, default=e.max_length),
        _opt(EncoderSpec, "truncation_side", type=click.Choice(["right", "left"]), default=e.truncation_side),
        _opt(EncoderSpec, "pooling", default=",".join(e.pooling), hidden=not columns),
        _opt(EncoderSpec, "layers", default="-1", hidden=not columns),
        _opt(EncoderSpec, "likelihood", is_flag=True, default=False, show_default=False, hidden=not columns),
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
    from ..outputs import check_not_input, check_output_path

    if output:
        check_output_path(output)
        check_not_input(output, **inputs)


def setup_logging(quiet: bool) -> None:
    from ..progress import progress_every

    progress_every()  # a bad ORM_CACHE_PROGRESS_SECONDS is one line now, not after the model loads
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s",
                        stream=sys.stderr, force=True)
    for noisy in ("httpx", "urllib3", "filelock", "huggingface_hub", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def head_options(f=None, base: bool = False):
    """The head options; ``base`` (sweep): they set the base configuration a grid varies, so only
    --solver and --feature are shown (the grid names the rest)."""
    if f is None:
        return lambda g: head_options(g, base)
    h = HeadConfig()
    fold = (lambda name: {"hidden": True} if base and name not in ("solver", "feature") else {})
    return _options(
        _opt(HeadConfig, "solver", type=click.Choice(["adamw", "lbfgs"]), default=h.solver, **fold("solver")),
        _opt(HeadConfig, "lr", type=float, default=h.lr, **fold("lr")),
        _opt(HeadConfig, "betas", default=",".join(map(str, h.betas)), **fold("betas")),
        _opt(HeadConfig, "weight_decay", type=float, default=h.weight_decay, **fold("weight_decay")),
        _opt(HeadConfig, "warmup_steps", type=int, default=h.warmup_steps, **fold("warmup_steps")),
        _opt(HeadConfig, "batch_size", type=int, default=h.batch_size, **fold("batch_size")),
        _opt(HeadConfig, "grad_clip", type=float, default=h.grad_clip, **fold("grad_clip")),
        _opt(HeadConfig, "steps", type=int, default=h.steps, **fold("steps")),
        _opt(HeadConfig, "seed", type=int, default=h.seed, **fold("seed")),
        _opt(HeadConfig, "init", type=click.Choice(["linear", "zeros"]), default=h.init, **fold("init")),
        _opt(HeadConfig, "l2", type=float, default=h.l2, **fold("l2")),
        _opt(HeadConfig, "margin", type=float, default=h.margin, **fold("margin")),
        _opt(HeadConfig, "center_coef", type=float, default=h.center_coef, **fold("center_coef")),
        _opt(HeadConfig, "feature", default=None, show_default=False, **fold("feature")),
        _opt(HeadConfig, "objective", type=click.Choice(list(OBJECTIVES)), default=h.objective, **fold("objective")),
        _opt(HeadConfig, "head", type=click.Choice(list(HEAD_KINDS)), default=h.head, **fold("head")),
        _opt(HeadConfig, "hidden", type=click.IntRange(min=1), default=h.hidden, **fold("hidden")),
        _opt(HeadConfig, "ensemble", type=click.IntRange(min=1), default=h.ensemble, **fold("ensemble")),
        _opt(HeadConfig, "ensemble_by", type=click.Choice(["auto", "seed", "bootstrap"]), default=h.ensemble_by, **fold("ensemble_by")),
    )(f)


store_option = click.option("--store", default=None, metavar="FINGERPRINT",
                            help="The store whose fingerprint starts with this (a head that records none).")
override_recipe_option = click.option(
    "--override-recipe", is_flag=True, help="Build texts another way than the head's recipe, on purpose.")


def rescore_options(f):
    return _options(
        click.option("--head", "head_path", required=True, type=click.Path(dir_okay=False), help="Checkpoint (.pt)."),
        click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False),
                     help="Traces to score: .jsonl, .json, .parquet, .csv, .arrow, .jsonl.gz or .json.gz."),
        click.option("--output", "output_path", required=True, type=click.Path(dir_okay=False),
                     help="Where to write: .jsonl, .parquet or .csv."),
        click.option("--text-col", default="text", show_default=True,
                     help="Column of the trace: a string or a conversation."),
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
                     help="Set bad rows aside in <output>.rejected.jsonl instead of stopping."),
        click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True,
                     help="Device for embedding cache misses."),
        _opt(RunSpec, "batch_tokens", type=int, default=None, show_default=False),
        quiet_option,
    )(f)


def answer_options(f=None, aggregate: bool = True):
    """--answer-col / --answer-pattern (and --aggregate): answer-aware best-of-N (docs/evaluation.md)."""
    def deco(f):
        opts = [
            click.option("--answer-col", default=None, metavar="COL",
                         help="Column holding each candidate's final answer (answer-aware best-of-N)."),
            click.option("--answer-pattern", default=None, metavar="REGEX",
                         help="Regex finding the final answer in each response: its last match, group 'answer' or "
                              "the first group, e.g. '####\\s*(.+)'. No match: the candidate is its own answer."),
        ]
        if aggregate:
            opts.append(click.option(
                "--aggregate", type=click.Choice(["best", "vote", "weighted-vote"]), default="best", show_default=True,
                help="Pick per group: the top-scored candidate; the most frequent answer; or the answer whose "
                     "candidates' exp(score/T) sum highest (T: the head's calibration, else 1)."))
        return _options(*opts)(f)
    return deco(f) if f is not None else deco


def answer_source(answer_col, answer_pattern):
    """The AnswerSource of the two flags (None without either); both at once is a usage error."""
    from ..evaluate.vote import AnswerSource

    if answer_col and answer_pattern:
        raise click.UsageError("give --answer-col or --answer-pattern, not both")
    if not (answer_col or answer_pattern):
        return None
    return AnswerSource(answer_col or None, answer_pattern or None)


def _rescore_summary(s, verb: str) -> None:
    click.echo(f"{verb} {s.rows:,} rows in {s.seconds:.2f}s ({s.rows_per_s:,.0f} rows/s): "
               f"{s.hits:,} distinct texts from the cache, {s.misses:,} embedded now"
               + ("" if s.model_loaded else " (no model loaded)"))
    if s.invalid:
        click.echo(f"rejected {s.invalid:,} invalid rows -> {s.rejected_path}")
    click.echo(f"output: {s.output}")


def finite(ctx, param, value):
    """A click callback: NaN passes a FloatRange (it compares false both ways), so refuse it here."""
    import math

    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number")
    return value
