"""``rank``: best-of-N over stored traces, by top score or by (weighted) vote on final answers.

The input is read twice, a chunk at a time (scores, groups, labels and answers first, then each
row again with its rank), through the same job as ``score`` (:mod:`.rescore`); the pick per
group is :mod:`orm_cache.evaluate.vote`'s.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np

from ..data.groups import GroupIds
from ..data.ingest import DataError, parse_label
from ..errors import ConfigError
from ..outputs import AtomicOutputs
from ..evaluate.steps import aggregate_steps, check_step_aggregate, offsets_of
from .rescore import ScoreSummary, TextColumns, _job, warn_replaced

if TYPE_CHECKING:
    from ..evaluate.vote import AnswerSource


def rank_rows(scores: np.ndarray, groups: list) -> np.ndarray:
    """1-based rank of each row within its group, best first; tied scores share the best rank."""
    from ..evaluate.vote import pick_groups

    return pick_groups(scores, groups)[0]


def rank_file(head_path, input_path, output_path, group_by: str, top_k: int | None = None, cache_dir="cache",
              cols: TextColumns | None = None, label_col: str | None = "label", skip_invalid: bool = False,
              device: str = "auto", batch_tokens: int | None = None, quiet: bool = True,
              store: str | None = None, feature: str | None = None, chunk_rows: int = 50_000,
              answers: "AnswerSource | None" = None, aggregate: str = "best", step_aggregate: str | None = None,
              step_pattern: str | None = None) -> ScoreSummary:
    """Rank candidates within each ``group_by`` group (rank 1 = best); write every row with its
    ``rank`` and ``score`` (or only ranks <= ``top_k``). With a label column, best-of-N accuracy
    (fractional credit for ties), random, oracle and the best-of-N curve go into the summary.

    ``answers`` (a column or a pattern, :class:`~orm_cache.evaluate.vote.AnswerSource`) gives
    each candidate a final answer, and ``aggregate`` picks one per group (best, vote,
    weighted-vote; :mod:`orm_cache.evaluate.vote`): rows are then ranked by their answer's weight,
    then score, and each row also gets ``final_answer`` (its own), ``group_answer``,
    ``group_weight``, ``group_share`` and ``aggregate``; with labels, the summary has every
    aggregation's best-of-N. ``step_aggregate`` (last, min, mean, product): a row's score is its
    trace's step prefixes' scores aggregated so (steps cut by ``step_pattern``, else the head's
    recorded delimiter, else a line break;
    :mod:`orm_cache.evaluate.steps`), and each row also gets ``step_scores``.

    The input is read twice, ``chunk_rows`` rows at a time: first to score every row (a chunk's
    distinct texts at once) and keep its score, group and label; then again to write each row
    with its rank. Rows are never all held in memory."""
    from ..evaluate.metrics import best_of_n_curve
    from ..evaluate.vote import (AGGREGATES, best_summary, check_aggregate, group_credits, pick_groups,
                                 require_answers, response_part, summarize)

    if top_k is not None and top_k < 1:
        raise ConfigError(f"--top-k {top_k} must be at least 1 (leave it out to write every row)")
    if chunk_rows < 1:
        raise ConfigError(f"--chunk-rows {chunk_rows} must be at least 1")
    check_aggregate(aggregate, answers is not None)
    if step_aggregate is not None:
        check_step_aggregate(step_aggregate)
    job = _job(head_path, input_path, output_path, cache_dir, cols, skip_invalid, device, batch_tokens, quiet, store,
               feature, bool(step_aggregate), step_pattern)
    has_labels = None
    group_ids = GroupIds(group_by)
    seen_answer_col = [False]

    def parse(where, row):
        nonlocal has_labels
        g = row.get(group_by)
        if g is None:
            state = "missing" if group_by not in row else "null"
            raise DataError(f"{where}: group column {group_by!r} is {state} (columns: {sorted(row)})")
        g = group_ids.check(g, where)
        parsed = job.steps_of(where, row) if step_aggregate else job.text_of(where, row)
        _, text, start = parsed[:3]
        if has_labels is None:
            has_labels = bool(label_col) and label_col in row
        label = parse_label(row.get(label_col), where, label_col) if has_labels else None
        answer = None
        if answers is not None:
            seen_answer_col[0] |= answers.column is not None and answers.column in row
            try:
                answer = answers.answer(row, response_part(text, start))
            except DataError as e:
                raise DataError(f"{where}: {e}") from None
        return parsed, g, label, answer

    # the vote's weights exp(score / T): the head's calibration is of whole-trace scores, so T = 1
    # for step-aggregated ones (eval --step-aggregate fits its own T on them)
    T = None if step_aggregate else job.head.temperature
    with AtomicOutputs() as outputs:
        out = job.outputs(output_path, outputs)
        scores, groups, labels, found = [], [], [], []  # one per valid row, in input order
        step_scores = []  # with step_aggregate: one list per valid row
        valid = job.valid_rows(parse)
        while chunk := list(itertools.islice(valid, chunk_rows)):
            by_key, steps = job.chunk_scores([p[0] for _, p in chunk])
            if step_aggregate:  # the chunk's rows aggregated at once
                rows = [steps[k] for _, ((k, *_), *_) in chunk]
                step_scores += rows
                scores += aggregate_steps(np.concatenate(rows), offsets_of(rows), step_aggregate).tolist()
            else:
                scores += [by_key[k] for _, ((k, *_), *_) in chunk]
            for _, (_, g, y, a) in chunk:
                groups.append(g)
                labels.append(y)
                found.append(a)
        if not scores:
            raise DataError(f"{job.input_path}: no valid rows to rank")
        if answers is not None:
            if answers.column is not None and not seen_answer_col[0]:
                raise DataError(f"--answer-col {answers.column}: no row of {job.input_path} has that column")
            job.summary.extra["answers"] = require_answers(found, answers, "candidates")
        scores = np.array(scores)
        ranks, picks = pick_groups(scores, groups, found if answers else None, aggregate, T)
        per_row = [None] * len(scores)
        if answers is not None:
            for idx, p in picks:
                cols_of = {"group_answer": p.answer, "group_weight": p.weight, "group_share": p.share,
                           "aggregate": aggregate}
                for i in idx:
                    per_row[i] = {"final_answer": found[i], **cols_of}
        again = job.valid_rows(parse, again=True)  # the rows the first pass accepted, in the same order
        i = 0
        written = ("score", "rank", *(("final_answer", "group_answer", "group_weight", "group_share", "aggregate")
                                      if answers is not None else ()), *(("step_scores",) if step_aggregate else ()))
        while chunk := list(itertools.islice(again, chunk_rows)):
            if i == 0:
                warn_replaced(chunk[0][0], written, job.input_path)
            out.write([{**r, "score": float(scores[j]), "rank": int(ranks[j]), **(per_row[j] or {}),
                        **({"step_scores": step_scores[j]} if step_aggregate else {})}
                       for j, (r, _) in enumerate(chunk, i) if top_k is None or ranks[j] <= top_k])
            i += len(chunk)
        if i != len(scores):
            raise DataError(f"{job.input_path}: the file changed while it was being ranked ({len(scores):,} valid rows "
                            f"read first, {i:,} the second time); nothing was written")
        out.close()
        if job.rejected is not None:
            job.rejected.close()
    summary = job.finish()
    summary.rows = len(scores)
    summary.extra["groups"] = len(picks)
    summary.extra["aggregate"] = aggregate
    summary.extra["temperature"] = T or 1.0
    if step_aggregate:
        summary.extra["step_aggregate"] = step_aggregate
    if has_labels:
        y = np.array(labels)
        idx = [i for i, _ in picks]  # the groups, as pick_groups found them
        credits = group_credits(scores, y, found if answers is not None else None, idx, T,
                                AGGREGATES if answers is not None else ("best",))
        summary.extra["best_of_n"] = best_summary(credits, idx)
        summary.extra["best_of_n_curve"] = best_of_n_curve(scores, y, groups)
        if answers is not None:
            summary.extra["best_of_n_answers"] = summarize(credits, idx, found, T)
    return summary
