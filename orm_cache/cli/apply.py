"""Commands that apply a head: score, rank, and the Hugging Face export and import."""

from __future__ import annotations

import click

from ..config import EncoderSpec
from .base import cli
from .options import (_opt, answer_options, answer_source, cache_option, quiet_option, rescore_options,
                      setup_logging, step_aggregate_option, step_pattern_option, _rescore_summary)


@cli.command(short_help="Offline re-scoring: add a score to every row of a file.")
@rescore_options
@click.option("--chunk-rows", type=click.IntRange(min=1), default=50_000, show_default=True,
              help="Rows read, scored and written at a time (bounds memory).")
@click.option("--steps", is_flag=True, help="Also write step_scores: the score of each step prefix of the trace "
              "(cached by embed --steps; misses pooled from one pass of the trace).")
@step_pattern_option
def score(head_path, input_path, output_path, text_col, messages_col, prompt_col, template, chat_template,
          recipe_kind, override_recipe, store, feature, cache_dir, skip_invalid, device, batch_tokens, quiet, chunk_rows,
          steps, step_pattern):
    """Offline re-scoring: add a score column to every row of a file, in input order.

    Texts already in the store for the head's encoder are scored without loading any model;
    misses are embedded and added to the store, so the next run is free. With a calibrated head
    a column p_beats_average = σ(score / T) is added too.
    """
    from ..pipeline.rescore import TextColumns, score_file

    setup_logging(quiet)
    s = score_file(head_path, input_path, output_path, cache_dir,
                   TextColumns(text_col, prompt_col, template, override_recipe, chat_template, messages_col, recipe_kind),
                   chunk_rows, skip_invalid, device,
                   batch_tokens, quiet, store, feature, steps, step_pattern)
    _rescore_summary(s, "scored")


@cli.command(short_help="Best-of-N: rank candidates per group by score.")
@rescore_options
@click.option("--group-by", required=True, help="Column naming the candidates' problem (one ranking per value).")
@click.option("--top-k", type=click.IntRange(min=1), default=None,
              help="Write only the best K per group [default: all rows, ranked].")
@click.option("--label-col", default="label", show_default=True,
              help="When present (0/1), report best-of-N accuracy beside random and oracle.")
@answer_options
@step_aggregate_option
@step_pattern_option
def rank(head_path, input_path, output_path, text_col, messages_col, prompt_col, template, chat_template,
         recipe_kind, override_recipe, store, feature, cache_dir, skip_invalid, device, batch_tokens, quiet, group_by, top_k,
         label_col, answer_col, answer_pattern, aggregate, step_aggregate, step_pattern):
    """Best-of-N: order candidates within each group by score (rank 1 = best; ties share a rank).

    With --answer-col or --answer-pattern each candidate has a final answer and --aggregate
    picks one per group (best, vote, weighted-vote): rows are ranked by their answer's weight,
    then score, and get final_answer, group_answer, group_weight, group_share and aggregate.
    With a label column, prints best-of-N accuracy (fractional credit when the pick is tied)
    beside random and oracle, every aggregation's when answers are given, and the best-of-N
    curve of the top-scored candidate for N = 1..max (docs/evaluation.md).
    """
    from ..pipeline.rank import rank_file
    from ..pipeline.rescore import TextColumns

    setup_logging(quiet)
    s = rank_file(head_path, input_path, output_path, group_by, top_k, cache_dir,
                  TextColumns(text_col, prompt_col, template, override_recipe, chat_template, messages_col, recipe_kind),
                  label_col or None, skip_invalid,
                  device, batch_tokens, quiet, store, feature, answers=answer_source(answer_col, answer_pattern),
                  aggregate=aggregate, step_aggregate=step_aggregate, step_pattern=step_pattern)
    _rescore_summary(s, "ranked")
    T = s.extra["temperature"]
    rule = {"best": "the top-scored candidate", "vote": "the most frequent answer",
            "weighted-vote": f"the answer with the largest sum of exp(score/T), T={T:.4g}"}[aggregate]
    click.echo(f"groups: {s.extra['groups']:,}; pick per group: {aggregate} ({rule})")
    if "answers" in s.extra:
        a = s.extra["answers"]
        click.echo(f"answers: {a['with_answer']:,} of {a['candidates']:,} candidates have one; "
                   f"{a['without_answer']:,} without (each its own answer)")
    if "best_of_n_answers" in s.extra:
        b = s.extra["best_of_n_answers"]
        click.echo("best-of-N accuracy: " + ", ".join(f"{k} {100 * b[k]:.1f}%" for k in
                                                       ("best", "vote", "weighted-vote", "random", "oracle"))
                   + f" (vote: majority, no scores; {b['weights']}; ties: fractional credit)")
    elif "best_of_n" in s.extra:
        b = s.extra["best_of_n"]
        click.echo(f"best-of-N accuracy {100 * b['accuracy']:.1f}% (random {100 * b['random']:.1f}%, oracle "
                   f"{100 * b['oracle']:.1f}%; ties: fractional credit 1/#tied)")
    if "best_of_n_curve" in s.extra:
        curve = "  ".join(f"N={c['n']}: {100 * c['accuracy']:.1f}%" for c in s.extra["best_of_n_curve"])
        click.echo(f"best-of-N curve of the top-scored candidate (expected over random subsets): {curve}")


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
    from ..pipeline.export import export_head

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
    from ..pipeline.export import import_head
    from ..store import short

    setup_logging(quiet)
    r = import_head(model_dir, out, cache_dir, dtype, max_length, truncation_side)
    spec = r.head.meta["encoder_spec"]
    click.echo(f"imported the score layer of {model_dir} ({r.head.dim}-dim, bias {r.head.bias:.6g}) as a head "
               f"on last@-1 of encoder {short(r.head.fingerprint)} ({spec['dtype']}, max length {spec['max_length']})")
    click.echo(f"checkpoint: {r.path}")
    click.echo(f"cache its vectors with: orm-cache embed --model {model_dir} --dtype {spec['dtype']} "
               f"--max-length {spec['max_length']} --data …")
