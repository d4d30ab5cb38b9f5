"""Offline re-scoring over stored traces (``score``; ``rank`` is :mod:`.rank`).

Texts whose vectors the store already holds (for the head's fingerprint) are scored from the
store alone: no model is loaded. Misses are embedded with the head's encoder and added to the
store, so the next run over the same traces is free. Input is streamed in chunks, so memory is
bounded by the chunk size, not the file: ``score`` reads it once; ``rank``, whose ranks need
every score of a group, reads it twice (scores and groups first, then each row again with its
rank), holding one score and one group value per row in between.
"""

from __future__ import annotations

import itertools
from array import array
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..encode.spec import RunSpec
from ..data.ingest import FILE_EXTS, DataError, encoder_model, read_rows
from ..data.readers import BadRow, file_format
from ..errors import ConfigError
from ..text import TextBuilder, TextRecipe
from ..data.writers import OutputWriter, RejectWriter, _input_rows, check_output_ext, rejected_path_for  # noqa: F401 (re-exported)
from ..head import Head
from ..outputs import AtomicOutputs, check_not_input
from ..progress import Progress

log = logging.getLogger(__name__)


@dataclass
class TextColumns:
    """How an input row becomes the text that is scored. ``prompt_col``, ``template`` and
    ``chat_template`` left None take the head's recorded recipe (the texts it was trained on);
    given explicitly and different from it, they are refused unless ``override_recipe``. A row
    without ``text_col`` is scored by its ``messages_col`` conversation."""

    text_col: str = "text"
    prompt_col: str | None = None
    template: str | None = None
    override_recipe: bool = False
    chat_template: str | None = None
    messages_col: str | None = "messages"
    recipe_kind: str | None = None

    def recipe_for(self, head: Head) -> TextRecipe:
        return TextRecipe.for_head(head.recipe, self.template, self.prompt_col, self.override_recipe,
                                   self.chat_template, self.recipe_kind)

    def builder_for(self, head: Head) -> TextBuilder:
        """Builds texts by the head's recipe; a conversation it has no chat template for takes
        the head's encoder's tokenizer's."""
        from .bind import prompt_required

        recipe = self.recipe_for(head)
        return TextBuilder(recipe, *encoder_model(head.meta.get("encoder_spec")),
                           require_prompt=prompt_required(head, recipe, self.override_recipe))


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


class Rescorer:
    """Scores texts from the store when it can, with the head's encoder when it must."""

    def __init__(self, head: Head, cache_dir, device: str = "auto", batch_tokens: int | None = None,
                 quiet: bool = True, store: str | None = None, feature: str | None = None):
        from .bind import store_for_head, with_store_defaults
        from ..store import VectorStore, store_dir

        self.cache_dir, self.device = cache_dir, device
        self.batch_tokens, self.quiet = batch_tokens, quiet
        from .joined import store_with_others

        if head.fingerprint and not store:  # the head's own store, created on the first miss if need be
            self.store = store_with_others(head, VectorStore(store_dir(cache_dir, head.fingerprint), head.fingerprint),
                                           cache_dir, must_exist=False)
        else:  # a reference-format head: the store named with --store, whose encoder it completes
            self.store = store_for_head(head, cache_dir, store)
        if self.store.columns:
            head = with_store_defaults(head, self.store, feature)  # checks encoder and width too
        self.head = head
        self._encoder = None
        self._others = None

    @property
    def encoder(self):
        if self._encoder is None:  # only on the first miss: hits never load transformers
            from .live import encoder_for_head

            self._encoder = encoder_for_head(self.head, self.device)
        return self._encoder

    def scores(self, texts: dict[str, str], summary: ScoreSummary,
               starts: dict[str, int | None] | None = None, special_tokens: bool = True,
               steps: dict[str, tuple] | None = None) -> dict[str, float]:
        """key -> score for every key of ``texts``; embeds and stores the misses first. ``starts``:
        key -> where its response starts (response_mean pools from it; absent: 0); a hit pooled
        from elsewhere is refused (:func:`~orm_cache.pipeline.vectors.check_response_starts`).
        ``special_tokens``: how the texts are tokenized (their keys say it too). ``steps``: trace
        key -> the ``(key, text)`` of its step prefixes (in ``texts`` too): a causal encoder pools
        a missing prefix from its trace's pass (:mod:`orm_cache.encode.prefixes`), another embeds
        it alone."""
        from ..encode.embedder import embed_texts
        from ..encode.model import is_causal

        starts = starts or {}
        parts = self.head.feature.split("+")
        missing = self.store.missing(texts, parts)
        summary.hits += len(texts) - len(missing)
        if missing:
            summary.misses += len(missing)
            summary.model_loaded = True
            run = RunSpec(cache_dir=str(self.cache_dir), device=self.device, batch_tokens=self.batch_tokens,
                          quiet=self.quiet)
            for vs, cols, encoder in self._encoders(parts):  # each encoder embeds the texts its store lacks
                todo = vs.missing(missing, cols)
                if todo:
                    enc = encoder()
                    embed_texts(miss_items(texts, list(todo), starts, special_tokens,
                                           steps if steps and is_causal(enc.config) else None), enc, run,
                                desc="embed misses")
            self.store.refresh()
        keys = list(texts)
        return dict(zip(keys, self.stored_scores(keys, starts).tolist()))

    def _encoders(self, parts):
        """``(store, its columns, encoder getter)`` of each encoder the head reads, first one first."""
        from .joined import other_columns, primary_feature

        first = getattr(self.store, "primary", self.store)
        out = [(first, primary_feature("+".join(parts)).split("+"), lambda: self.encoder)]
        for m, cols in other_columns("+".join(parts)).items():
            out.append((self.store.others[m], cols, lambda m=m: self.other_encoder(m)))
        return out

    def other_encoder(self, model: str):
        if self._others is None:
            from .live import other_encoders

            self._others = other_encoders(self.head, self.device)
        return self._others[model]

    def stored_scores(self, keys: list[str], starts: dict[str, int | None] | None = None) -> np.ndarray:
        """``(N,)`` float32 scores of ``keys``, every one in the store, read from it (a hit pooled
        from another response start than ``starts`` says is refused)."""
        from .vectors import check_response_starts

        starts = starts or {}
        parts = self.head.feature.split("+")
        found = [self.store.locate(keys, c) for c in parts]  # (N,) rows of each stored column
        for c, gids in zip(parts, found):
            vs, col = self.store.part(c)
            check_response_starts(vs, gids, keys, starts, col)
        return self.head.score(self.store.columns_at(found, self.head.feature))  # (N,), read from the map in blocks


def miss_items(texts: dict[str, str], todo: list, starts: dict, special: bool, steps: dict | None) -> list[tuple]:
    """Stage 1's items for the keys ``todo`` of ``texts`` (in that order): with ``steps`` (trace key
    -> its prefixes' ``(key, text)``), a trace lacking any of its prefixes brings them along
    (pooled from its pass; the trace itself is stored only if it lacks it too); the other keys alone."""
    items, covered, lacking = [], set(), set(todo)
    for host, prefixes in (steps or {}).items():
        need = tuple((k, t) for k, t in prefixes if k in lacking and k != host)
        if host in lacking or need:
            items.append((host, texts[host], starts.get(host, 0), special, need))
            covered.add(host)
            covered.update(k for k, _ in need)
    return items + [(k, texts[k], starts.get(k, 0), special) for k in todo if k not in covered]


def _check_input(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if file_format(path) is None:
        raise DataError(f"{path}: unknown format {path.suffix!r}; use one of {', '.join(FILE_EXTS)}")


def _prob(score: float, T: float | None) -> float | None:
    """σ(score / T), without overflow for any score (None without T)."""
    return None if not T else 0.5 * (1.0 + math.tanh(0.5 * score / T))


@dataclass
class _Job:
    """What score and rank share: the input, the head (and the recipe its texts need), its
    rescorer, the summary, and the side file of rejected rows."""

    input_path: Path
    head: Head
    rescorer: Rescorer
    text_col: str
    messages_col: str | None
    builder: TextBuilder
    summary: ScoreSummary
    skip_invalid: bool
    t0: float
    rejected: "RejectWriter | None" = None
    accepted: array = field(default_factory=lambda: array("q"))  # line numbers of the rows valid_rows yielded
    step_pattern: str | None = None  # score each trace's step prefixes too (None: whole traces only)

    def valid_rows(self, parse, again: bool = False):
        """Yield ``(row, parse(where, row))`` for every row ``parse`` accepts; a DataError stops
        the run, or with --skip-invalid sends the row and its reason to the side file. ``again``:
        a second reading of the same input yields ``(row, None)`` for exactly the rows the first
        accepted (by line number), without parsing them again: no text is built or answer
        searched twice, and a row cannot be judged differently the second time."""
        if again:
            accepted, i = self.accepted, 0
            for lineno, row in read_rows(self.input_path, lenient=self.rejected is not None):
                if i < len(accepted) and lineno == accepted[i]:
                    i += 1
                    yield row, None
            return
        for lineno, row in read_rows(self.input_path, lenient=self.rejected is not None):
            try:
                if isinstance(row, BadRow):  # a line that is not a readable JSON object
                    raise DataError(row.reason)
                parsed = parse(f"{self.input_path}:{lineno}", row)
            except DataError as e:
                if self.rejected is None:
                    raise
                self.rejected.add(lineno, row, str(e))
                self.summary.invalid += 1
                continue
            self.accepted.append(lineno)
            yield row, parsed

    def text_of(self, where: str, row: dict) -> tuple[str, str, int | None]:
        """``(key, text, response start)`` of one input row."""
        text, start = self.builder.row_text(row, where, self.text_col, self.messages_col)
        return self.builder.key(text), text, start

    def steps_of(self, where: str, row: dict) -> tuple:
        """:meth:`text_of` and the ``(key, text)`` of the row's step prefixes (``step_pattern``)."""
        from ..text.build import row_steps

        key, text, start = self.text_of(where, row)
        prefixes = row_steps(self.builder, row, where, self.step_pattern, self.text_col, self.messages_col)
        return key, text, start, tuple((self.builder.key(t), t) for t, _ in prefixes)

    def chunk_scores(self, parsed: list[tuple]) -> tuple[dict[str, float], dict[str, list[float]]]:
        """Scores of a chunk of :meth:`text_of` (or :meth:`steps_of`) results: key -> score, and
        with steps trace key -> its step prefixes' scores, in step order."""
        starts = {p[0]: p[2] for p in reversed(parsed)}  # the first row of a repeated text counts
        texts = {p[0]: p[1] for p in parsed}
        steps = {p[0]: p[3] for p in parsed if len(p) > 3} if self.step_pattern is not None else None
        for k, prefixes in (steps or {}).items():
            for pk, pt in prefixes:
                texts.setdefault(pk, pt)
                starts.setdefault(pk, starts[k])  # a prefix's response starts where its trace's does
        scores = self.rescorer.scores(texts, self.summary, starts, self.builder.special_tokens, steps)
        return scores, {k: [scores[pk] for pk, _ in prefixes] for k, prefixes in (steps or {}).items()}

    def outputs(self, output_path, outputs: AtomicOutputs) -> "OutputWriter":
        """The output writer, and with --skip-invalid the side file, as temporary files of
        ``outputs``: both appear only when the whole job succeeds."""
        out = OutputWriter(output_path, outputs.path(output_path))
        if self.skip_invalid:
            side = rejected_path_for(output_path)
            check_not_input(side, input=self.input_path)
            self.rejected = RejectWriter(side, outputs.path(side))
            self.summary.rejected_path = str(side)
        return out

    def finish(self) -> ScoreSummary:
        self.summary.seconds = time.perf_counter() - self.t0
        return self.summary


def _job(head_path, input_path, output_path, cache_dir, cols, skip_invalid, device, batch_tokens, quiet,
         store, feature, steps: bool = False, step_pattern: str | None = None) -> _Job:
    t0 = time.perf_counter()
    input_path = Path(input_path)
    check_not_input(output_path, input=input_path, head=head_path)  # before anything is read
    _check_input(input_path)
    check_output_ext(Path(output_path))
    head = Head.load(head_path)
    cols = cols or TextColumns()
    cols.recipe_for(head)  # a recipe conflict is refused before any store is opened
    rescorer = Rescorer(head, cache_dir, device, batch_tokens, quiet, store, feature)
    if steps:
        from ..text import DEFAULT_STEP_PATTERN, step_regex
        from .bind import head_step_pattern

        step_pattern = head_step_pattern(rescorer.head, step_pattern) or DEFAULT_STEP_PATTERN
        step_regex(step_pattern)  # a bad pattern is one line before any row is read
    else:
        step_pattern = None
    return _Job(input_path, rescorer.head, rescorer, cols.text_col, cols.messages_col, cols.builder_for(rescorer.head),
                ScoreSummary(output=str(output_path)), skip_invalid, t0, step_pattern=step_pattern)


def score_file(head_path, input_path, output_path, cache_dir="cache", cols: TextColumns | None = None,
               chunk_rows: int = 50_000, skip_invalid: bool = False, device: str = "auto",
               batch_tokens: int | None = None, quiet: bool = True, store: str | None = None,
               feature: str | None = None, steps: bool = False, step_pattern: str | None = None) -> ScoreSummary:
    """Add ``score`` (and ``p_beats_average`` = σ(score/T) when calibrated; ``p_correct`` =
    σ(score) for a pointwise head, whose score is a log-odds) to every row of ``input_path``, in
    input order, streaming ``chunk_rows`` rows at a time. ``steps``: also ``step_scores``, the
    score of each step prefix of the row's trace, in step order (steps cut by ``step_pattern``,
    else the head's recorded delimiter, else a line break; :mod:`orm_cache.text.steps`). The output (and the side file of rejected rows) replaces an existing file only
    once its last row is written."""
    if chunk_rows < 1:
        raise ConfigError(f"--chunk-rows {chunk_rows} must be at least 1")
    job = _job(head_path, input_path, output_path, cache_dir, cols, skip_invalid, device, batch_tokens, quiet, store,
               feature, steps, step_pattern)
    step_pattern = job.step_pattern
    T = job.head.temperature
    pointwise = (job.head.meta.get("head") or {}).get("objective") == "pointwise"  # its score is a log-odds
    written = ("score", "p_beats_average", "p_correct", *(("step_scores",) if step_pattern is not None else ()))
    with AtomicOutputs() as outputs, Progress(_input_rows(job.input_path), "score", "row", quiet) as bar:
        out = job.outputs(output_path, outputs)
        rows = job.valid_rows(job.text_of if step_pattern is None else job.steps_of)
        while chunk := list(itertools.islice(rows, chunk_rows)):
            if not job.summary.rows:
                warn_replaced(chunk[0][0], written, job.input_path)
            scores, steps = job.chunk_scores([p for _, p in chunk])
            out.write([{**row, "score": scores[p[0]], **({"p_beats_average": _prob(scores[p[0]], T)} if T else {}),
                        **({"p_correct": _prob(scores[p[0]], 1.0)} if pointwise else {}),
                        **({"step_scores": steps[p[0]]} if step_pattern is not None else {})} for row, p in chunk])
            job.summary.rows += len(chunk)
            bar.update(job.summary.rows + job.summary.invalid - bar.done)  # input rows consumed
        out.close()
        if job.rejected is not None:
            job.rejected.close()
    return job.finish()


def warn_replaced(row: dict, written, path) -> None:
    """Say once, as a warning, which of the input's columns the output replaces with its own."""
    clash = [c for c in written if c in row]
    if clash:
        log.warning("%s already has column(s) %s: the output replaces them with this run's", path, ", ".join(clash))
