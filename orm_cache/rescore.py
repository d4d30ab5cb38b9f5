"""Offline re-scoring and best-of-N over stored traces.

Texts whose vectors the store already holds (for the head's fingerprint) are scored from the
store alone: no model is loaded. Misses are embedded with the head's encoder and added to the
store, so the next run over the same traces is free. Input is streamed in chunks, so memory is
bounded by the chunk size, not the file.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import DEFAULT_TEMPLATE, RunSpec
from .data.ingest import FILE_EXTS, DataError, parse_label, prompt_field, read_rows, render, text_field, trace_key
from .head import Head

log = logging.getLogger(__name__)


@dataclass
class TextColumns:
    """How an input row becomes the text that is scored (the same template as stage 1)."""

    text_col: str = "text"
    prompt_col: str | None = "prompt"
    template: str = DEFAULT_TEMPLATE


@dataclass
class ScoreSummary:
    rows: int = 0
    hits: int = 0  # distinct texts found in the store
    misses: int = 0  # distinct texts embedded now
    invalid: int = 0
    seconds: float = 0.0
    model_loaded: bool = False
    rejected_path: str | None = None
    output: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def row_text(row: dict, cols: TextColumns, where: str) -> str:
    """The text of one input row (template applied), or :class:`DataError` naming the row and problem."""
    text = text_field(row, cols.text_col, where, "--text-col")
    return render(cols.template, text, prompt_field(row, cols.prompt_col, where))


class OutputWriter:
    """Streams rows to .jsonl, .csv or .parquet (by the output's extension)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.ext = self.path.suffix.lower()
        if self.ext not in (".jsonl", ".csv", ".parquet"):
            raise DataError(f"{self.path}: output must be .jsonl, .csv or .parquet")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".tmp-{self.path.name}")
        self._f = None
        self._writer = None
        self._fields = None

    def write(self, rows: list[dict]) -> None:
        if not rows:
            return
        if self.ext == ".jsonl":
            if self._f is None:
                self._f = open(self._tmp, "w", encoding="utf-8")
            for r in rows:
                self._f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
        elif self.ext == ".csv":
            import csv

            if self._f is None:
                self._f = open(self._tmp, "w", newline="", encoding="utf-8")
                self._fields = list(rows[0])
                self._writer = csv.DictWriter(self._f, self._fields, extrasaction="ignore")
                self._writer.writeheader()
            self._writer.writerows(rows)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pylist(rows)
            if self._writer is None:
                self._writer = pq.ParquetWriter(self._tmp, table.schema)
            self._writer.write_table(table.cast(self._writer.schema))

    def close(self) -> None:
        """Finish the file and move it into place (a crashed run leaves no half-written output)."""
        if self.ext == ".parquet" and self._writer is not None:
            self._writer.close()
        if self._f is not None:
            self._f.close()
        if self._tmp.exists():
            self._tmp.replace(self.path)
        else:  # no rows: still leave an (empty) output
            self.path.write_text("")


class Rescorer:
    """Scores texts from the store when it can, with the head's encoder when it must."""

    def __init__(self, head: Head, cache_dir, device: str = "auto", batch_tokens: int | None = None,
                 quiet: bool = True):
        from .stage2 import store_for_head
        from .store import VectorStore, store_dir

        self.head, self.cache_dir, self.device = head, cache_dir, device
        self.batch_tokens, self.quiet = batch_tokens, quiet
        if head.fingerprint:  # the head's own store, created on the first miss if need be
            self.store = VectorStore(store_dir(cache_dir, head.fingerprint), head.fingerprint)
        else:
            self.store = store_for_head(head, cache_dir)
        self._encoder = None

    @property
    def encoder(self):
        if self._encoder is None:  # only on the first miss: hits never load transformers
            from .live import LiveScorer

            self._encoder = LiveScorer(self.head, self.device).encoder
        return self._encoder

    def scores(self, texts: dict[str, str], summary: ScoreSummary) -> dict[str, float]:
        """key -> score for every key of ``texts``; embeds and stores the misses first."""
        from .encode.embedder import embed_texts

        missing = self.store.missing(texts)
        summary.hits += len(texts) - len(missing)
        if missing:
            summary.misses += len(missing)
            summary.model_loaded = True
            run = RunSpec(cache_dir=str(self.cache_dir), device=self.device, batch_tokens=self.batch_tokens,
                          quiet=self.quiet)
            embed_texts({k: texts[k] for k in missing}, self.encoder, run, desc="embed misses")
            self.store.refresh()
        keys = list(texts)
        s = self.head.score(self.store.vectors(keys, self.head.feature))
        return dict(zip(keys, s.tolist()))


def _check_input(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix.lower() not in FILE_EXTS:
        raise DataError(f"{path}: unknown format {path.suffix!r}; use one of {', '.join(FILE_EXTS)}")


def _prob(score: float, T: float | None) -> float | None:
    return None if not T else 1.0 / (1.0 + math.exp(-score / T))


@dataclass
class _Job:
    """What score and rank share: the input, the head and its rescorer, the summary and the
    side file of rejected rows."""

    input_path: Path
    head: Head
    rescorer: Rescorer
    cols: TextColumns
    summary: ScoreSummary
    rejected: "RejectWriter | None"
    t0: float

    def valid_rows(self, parse):
        """Yield ``(row, parse(where, row))`` for every row ``parse`` accepts; a DataError stops
        the run, or with --skip-invalid sends the row and its reason to the side file."""
        for lineno, row in read_rows(self.input_path):
            try:
                parsed = parse(f"{self.input_path}:{lineno}", row)
            except DataError as e:
                if self.rejected is None:
                    raise
                self.rejected.add(lineno, row, str(e))
                self.summary.invalid += 1
                continue
            yield row, parsed

    def finish(self) -> ScoreSummary:
        if self.rejected is not None:
            self.summary.rejected_path = self.rejected.close()
        self.summary.seconds = time.perf_counter() - self.t0
        return self.summary


def _job(head_path, input_path, output_path, cache_dir, cols, skip_invalid, device, batch_tokens, quiet) -> _Job:
    t0 = time.perf_counter()
    input_path = Path(input_path)
    _check_input(input_path)
    head = Head.load(head_path)
    return _Job(input_path, head, Rescorer(head, cache_dir, device, batch_tokens, quiet), cols or TextColumns(),
                ScoreSummary(output=str(output_path)), RejectWriter(output_path) if skip_invalid else None, t0)


def score_file(head_path, input_path, output_path, cache_dir="cache", cols: TextColumns | None = None,
               chunk_rows: int = 50_000, skip_invalid: bool = False, device: str = "auto",
               batch_tokens: int | None = None, quiet: bool = True) -> ScoreSummary:
    """Add ``score`` (and ``p_beats_average`` = σ(score/T) when calibrated) to every row of
    ``input_path``, in input order, streaming ``chunk_rows`` rows at a time."""
    job = _job(head_path, input_path, output_path, cache_dir, cols, skip_invalid, device, batch_tokens, quiet)
    T = job.head.temperature
    out = OutputWriter(output_path)

    def parse(where, row):
        text = row_text(row, job.cols, where)
        return trace_key(text), text

    rows = job.valid_rows(parse)
    try:
        while chunk := list(itertools.islice(rows, chunk_rows)):
            texts = dict(kt for _, kt in chunk)
            scores = job.rescorer.scores(texts, job.summary)
            out.write([{**row, "score": scores[k], **({"p_beats_average": _prob(scores[k], T)} if T else {})}
                       for row, (k, _) in chunk])
            job.summary.rows += len(chunk)
    finally:
        out.close()
    return job.finish()


class RejectWriter:
    """Side file of rows that failed validation, each with its row number and reason."""

    def __init__(self, output_path):
        self.path = Path(output_path).with_suffix(".rejected.jsonl")
        self.rows = []

    def add(self, lineno: int, row: dict, reason: str) -> None:
        self.rows.append({"row": lineno, "reason": reason, "data": row})

    def close(self) -> str | None:
        if not self.rows:
            return None
        with open(self.path, "w", encoding="utf-8") as f:
            for r in self.rows:
                f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
        return str(self.path)


def rank_rows(scores: np.ndarray, groups: list) -> np.ndarray:
    """1-based rank of each row within its group, best first; tied scores share the best rank."""
    from .evaluate.metrics import group_indices

    scores = np.asarray(scores, dtype=np.float64)
    ranks = np.empty(len(scores), dtype=np.int64)
    for idx in group_indices(groups):
        s = scores[idx]
        # rank = 1 + number of strictly better candidates in the group ("min" ranking)
        ranks[idx] = 1 + (s[None, :] > s[:, None]).sum(axis=1)
    return ranks


def rank_file(head_path, input_path, output_path, group_by: str, top_k: int | None = None, cache_dir="cache",
              cols: TextColumns | None = None, label_col: str | None = "label", skip_invalid: bool = False,
              device: str = "auto", batch_tokens: int | None = None, quiet: bool = True) -> ScoreSummary:
    """Rank candidates within each ``group_by`` group (rank 1 = best); write every row with its
    ``rank`` and ``score`` (or only ranks <= ``top_k``). With a label column, best-of-N accuracy
    (fractional credit for ties), random, oracle and the best-of-N curve go into the summary."""
    from .evaluate.metrics import best_of_n, best_of_n_curve

    job = _job(head_path, input_path, output_path, cache_dir, cols, skip_invalid, device, batch_tokens, quiet)
    has_labels = None

    def parse(where, row):
        nonlocal has_labels
        if row.get(group_by) is None:
            raise DataError(f"{where}: group column {group_by!r} is missing (columns: {sorted(row)})")
        text = row_text(row, job.cols, where)
        if has_labels is None:
            has_labels = bool(label_col) and label_col in row
        label = parse_label(row.get(label_col), where, label_col) if has_labels else None
        return trace_key(text), text, row[group_by], label

    valid = list(job.valid_rows(parse))
    if not valid:
        raise DataError(f"{job.input_path}: no valid rows to rank")
    rows = [row for row, _ in valid]
    keys, texts, groups, labels = zip(*(p for _, p in valid))
    scores_by_key = job.rescorer.scores(dict(zip(keys, texts)), job.summary)
    scores = np.array([scores_by_key[k] for k in keys])
    ranks = rank_rows(scores, groups)
    out = OutputWriter(output_path)
    try:
        out.write([{**r, "score": float(s), "rank": int(k)} for r, s, k in zip(rows, scores, ranks)
                   if top_k is None or k <= top_k])
    finally:
        out.close()
    summary = job.finish()
    summary.rows = len(rows)
    summary.extra["groups"] = len(set(map(str, groups)))
    if has_labels:
        y = np.array(labels)
        summary.extra["best_of_n"] = best_of_n(scores, y, groups)
        summary.extra["best_of_n_curve"] = best_of_n_curve(scores, y, groups)
    return summary
