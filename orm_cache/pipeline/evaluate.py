"""Use cases ``eval`` and ``verify``: a head's metric table on a split, from cached vectors only,
with its calibration; and cached-versus-live scores on a sample (loads the encoder)."""

from __future__ import annotations

import logging
import math

from dataclasses import replace

from ..data.spec import DataSpec
from ..data import DataError
from ..errors import ConfigError, UserError
from ..evaluate import evaluate
from ..evaluate.metrics import fit_temperature
from ..evaluate.report import margins_of
from ..head import Head
from ..store import StoreError
from .bind import head_data_spec, load_vectors, store_for_head, with_store_defaults

log = logging.getLogger(__name__)


def calibrate(head: Head, sv) -> float:
    """Fit the temperature of σ(Δ/T) on ``sv``'s pairs and record it in the head (None when no
    pair is wrong, so no finite T is optimal); returns T."""
    T = fit_temperature(margins_of(sv.trace_scores(head), sv.ci, sv.ri))
    head.meta["calibration"] = {"temperature": T if math.isfinite(T) else None, "fitted_on": sv.data.split}
    return T


def calibrate_and_evaluate(head: Head, ev) -> dict:
    """Fit the temperature on ``ev``'s split, record it and the headline in the head; return the
    full report on that split."""
    T = calibrate(head, ev)
    report = evaluate(head, ev, temperature=T)
    report["calibration"]["fitted_on"] = ev.data.split
    head.meta.setdefault("metrics", {})[ev.data.split] = _headline(report)
    return report


def _headline(r: dict) -> dict:
    keys = ("accuracy", "ci", "margin", "pairs")
    return {k: r[k] for k in keys} | ({"best_of_n": r["best_of_n"]} if "best_of_n" in r else {})


def evaluate_split(head_path, data_spec: DataSpec, cache_dir="cache", calibrate_on: str | None = "validation",
                   bootstrap: int = 1000, ci_level: float = 0.9, seed: int = 0, length_edges=(128, 256),
                   store: str | None = None, feature: str | None = None, save_calibration: bool = False,
                   override_recipe: bool = False, by=(), answers=None, step_aggregate: str | None = None) -> dict:
    """The full metric table of a head on one split, with the head's text recipe.

    The calibration temperature T is fitted on ``calibrate_on`` when that split is cached (the
    evaluated split itself only when named); otherwise calibration is reported for T = 1 and
    said so. The checkpoint is rewritten with T only when ``save_calibration`` is set. ``by``:
    metadata columns to break the headline down by (``report["by"]``); a column no row has is a
    DataError naming the columns there are, raised before anything is computed or saved.
    ``answers`` (an :class:`~orm_cache.evaluate.vote.AnswerSource`): best-of-N of every
    aggregation (best, vote, weighted-vote with this calibration's T) beside random and oracle.
    ``step_aggregate`` (last, min, mean, product): each trace is scored by its step prefixes'
    scores, aggregated so (their vectors from ``embed --steps``), calibration included."""
    from ..evaluate.by import check_columns

    by = list(dict.fromkeys([by] if isinstance(by, str) else by or ()))
    head = Head.load(head_path)
    vs = store_for_head(head, cache_dir, store)
    head = with_store_defaults(head, vs, feature)
    feature = head.feature
    data_spec = head_data_spec(head, data_spec, override_recipe)
    keep = [*by, *([answers.column] if answers is not None and answers.column else [])]
    if keep:
        data_spec = replace(data_spec, keep_columns=tuple(dict.fromkeys((*data_spec.keep_columns, *keep))))
    found = None

    def check(data):
        nonlocal found
        check_columns(data, by, data_spec.group_col)
        found = split_answers(data, answers) if answers is not None else None

    if step_aggregate and save_calibration:
        raise ConfigError("--save-calibration records the temperature of whole-trace scores; it cannot be fitted "
                          "on step-aggregated ones (drop --step-aggregate to save it)")
    sv = load_vectors(data_spec, vs, feature, cache_dir, check, step_aggregate)
    if not len(sv.ci):
        raise DataError(f"split {sv.data.split!r} of {sv.data.source} gives no pairs to evaluate (pointwise data "
                        "needs a correct and an incorrect trace in a group, or in the split)")
    T, note = None, "no calibration split (--calibrate-on ''): reported for T = 1"
    if calibrate_on:
        try:
            cal = sv if calibrate_on == data_spec.split else load_vectors(
                replace(data_spec, split=calibrate_on), vs, feature, cache_dir, step_aggregate=step_aggregate)
            if step_aggregate and cal is not sv:
                cal.trace_scores(head)  # its step prefixes are cached too, or it is no calibration split
            if cal is not sv and cal.data.identity["pairs_sha256"] == sv.data.identity["pairs_sha256"]:
                raise DataError(f"split {calibrate_on!r} is the evaluated rows themselves (a file without a split "
                                "column is used whole for every --split)")
        except (DataError, StoreError) as e:
            note = f"calibration split {calibrate_on!r} unavailable ({e}); reported for T = 1"
            log.warning("not calibrating: %s", note)
        else:
            T = calibrate(head, cal)
            note = None
            if save_calibration:
                if not math.isfinite(T):
                    raise UserError(f"no finite temperature fits {calibrate_on} (no pair is misordered); "
                                     "the checkpoint is left as it was")
                head.save(head_path)
    if save_calibration and T is None:
        raise UserError(f"--save-calibration: no temperature was fitted ({note}); the checkpoint is left as it was")
    # the vote's weights exp(score / T): this run's calibration, else the checkpoint's, else T = 1
    vote_T = T if T is not None and math.isfinite(T) else head.temperature
    report = evaluate(head, sv, bootstrap, ci_level, seed, length_edges, temperature=T, by=by, answers=found,
                      vote_temperature=vote_T)
    if found is not None:
        from ..evaluate.vote import require_answers

        report["answers"] = {**require_answers(found, answers, "labelled traces"), "source": answers.describe()}
    if T is not None:
        report["calibration"]["fitted_on"] = calibrate_on
        report["calibration"]["saved_to_checkpoint"] = bool(save_calibration)
    else:
        report["calibration"]["note"] = note
    report["head"] = str(head_path)
    report["fingerprint"] = vs.fp
    return report


def split_answers(data, answers) -> list:
    """Each labelled trace's final answer (None: none) by ``answers``: its row's column, or the
    pattern's last match in its response. Pairwise data has no candidates to vote among."""
    from ..evaluate.vote import response_part

    if data.kind != "pointwise" or data.groups is None:
        raise DataError(f"--answer-{'col' if answers.column else 'pattern'}: answer-aware best-of-N needs labelled "
                        f"traces grouped by problem (text, label, group); split {data.split!r} is "
                        + ("pairwise" if data.kind != "pointwise" else "without a group column"))
    if answers.column is not None:
        if answers.column not in data.trace_columns:
            raise DataError(f"--answer-col {answers.column}: no row of split {data.split!r} has it; its metadata "
                            f"columns: {', '.join(data.trace_columns) or 'none'}")
        return [answers.answer({answers.column: v}, "") for v in data.trace_meta[answers.column]]
    return [answers.from_text(response_part(data.texts[k], data.response_starts.get(k))) for k in data.keys]


def verify_head(head_path, data_spec: DataSpec, cache_dir="cache", sample: int = 64, seed: int = 0,
                atol: float | None = None, device: str = "auto", batch_tokens: int | None = None,
                store: str | None = None, feature: str | None = None, override_recipe: bool = False):
    """Cached vs live scores for a seeded sample of ``data_spec``'s pairs (loads the encoder).
    A reference-format head (no recorded encoder) is checked against ``store``'s encoder."""
    from ..evaluate.verify import verify

    if atol is not None and not (math.isfinite(atol) and atol >= 0):
        raise ConfigError(f"--atol {atol} must be a finite number >= 0")
    from .live import LiveScorer

    head = Head.load(head_path)
    vs = store_for_head(head, cache_dir, store)
    head = with_store_defaults(head, vs, feature)
    sv = load_vectors(head_data_spec(head, data_spec, override_recipe), vs, head.feature, cache_dir)
    scorer = LiveScorer(head, device, batch_tokens)
    return verify(head, sv, scorer, sample, seed, atol)


def likelihood_report(data_spec: DataSpec, enc_spec, cache_dir="cache", store: str | None = None) -> dict:
    """The card's data check on one split, from the stored ``logprob`` column (``embed
    --likelihood``): the frozen LM's log-likelihood of each response against its label."""
    import numpy as np

    from ..evaluate.likelihood import likelihood_table
    from .bind import encoder_store_for

    vs = encoder_store_for(data_spec, enc_spec, cache_dir, "logprob", store)
    sv = load_vectors(data_spec, vs, "logprob", cache_dir)
    X = sv.X.take(np.arange(len(sv.X)), dtype=np.float64)  # (U, 3): mean, min, sum
    scored = logprob_tokens(vs, sv.keys) > 0  # (U,): a text whose response had no token to score is left out
    d = sv.data
    if d.labels is not None:
        rows, labels = sv.rows(d.keys), d.labels
    else:
        rows = np.concatenate([sv.ci, sv.ri])
        labels = np.concatenate([np.ones(len(sv.ci)), np.zeros(len(sv.ri))])
    keep, pairs = scored[rows], scored[sv.ci] & scored[sv.ri]
    out = likelihood_table(X, rows[keep], np.asarray(labels)[keep], sv.ci[pairs], sv.ri[pairs])
    return {"split": d.split, "source": d.source, "model": (vs.spec() or {}).get("model") or enc_spec.model,
            "fingerprint": vs.fp, "left_out": int((~scored).sum()),
            "left_out_rule": "texts whose response had no token to score (logprob_tokens = 0)", **out}


def logprob_tokens(vs, keys):
    """``(N,)`` how many response tokens each key's stored logprob is over."""
    import numpy as np

    from ..store.columns import LOGPROB, LOGPROB_TOKENS

    return np.asarray(vs.scalars_at(vs.locate(keys, LOGPROB), LOGPROB_TOKENS))
