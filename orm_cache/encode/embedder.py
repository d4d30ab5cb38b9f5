"""The stage-1 driver: embed every distinct text the store lacks, once, in length-sorted batches.

Work is proportional to *distinct missing* texts: keys already in the store are skipped before
the model is even loaded. The texts stream in two passes over their source, and memory is
bounded by a chunk, not by the run:

1. keys: every text's key is looked up in the store, ``run.chunk_texts`` keys at a time; what
   stays is the 32-byte digest of each distinct key (which are missing, and this process's);
2. texts: the source is read again and the missing texts are taken ``run.chunk_texts`` at a
   time: tokenized once, sorted by length (longest first, so an out-of-memory shows at once),
   cut into batches whose padded size stays under a token budget, encoded and written. Only the
   pooled ``(B, D)`` rows travel back to the host; a chunk's token ids are dropped when it is done.

Sorting within a chunk instead of across the run costs little padding: a chunk of thousands of
texts already holds nearly every length (``benchmarks/scale.py`` measures it).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .prefixes import batch_rows, plan_chunk, prefix_args
from .spec import RunSpec, batch_tokens_for
from ..progress import Progress
from ..store import ShardWriter, StoreError, VectorStore, short, store_dir
from ..store.writer import check_writable

log = logging.getLogger(__name__)


@dataclass
class EmbedReport:
    """What one stage-1 run did; every count is counted, none inferred."""

    fingerprint: str
    store: str
    texts: int  # distinct texts asked for
    cached: int  # of those, already in the store
    assigned: int  # missing texts this process was given (all of them unless sharded)
    embedded: int  # texts run through the encoder by this process
    batches: int
    tokens: int  # non-padding tokens embedded
    padded_tokens: int  # tokens including padding
    truncated: int
    seconds: float  # wall time of the whole call
    recomputed: int = 0  # rows whose half-precision states overflowed, recomputed in float32
    response_fallback: int = 0  # rows whose response was not found: response_mean pooled over every token
    prefixes: int = 0  # step prefixes pooled from their trace's forward pass (stored as rows, in `embedded`: no)
    prefixes_alone: int = 0  # step prefixes whose tokens are not their trace's first: embedded on their own
    logprob_empty: int = 0  # --likelihood rows with no response token to score: logprob stored as 0, 0, 0
    load_seconds: float = 0.0  # of which: loading the model weights
    shards_written: list[str] = field(default_factory=list)  # by this process
    shards: int = 0  # shards written (summed over ranks under torch.distributed)
    ranks: int = 1  # processes that shared the work (seconds are rank 0's)

    @property
    def encode_seconds(self) -> float:
        """Tokenizing, forward passes and writing: the wall time less model loading."""
        return max(self.seconds - self.load_seconds, 0.0)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.encode_seconds if self.encode_seconds > 0 else 0.0

    @property
    def texts_per_s(self) -> float:
        return self.embedded / self.encode_seconds if self.encode_seconds > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(tokens_per_s=self.tokens_per_s, texts_per_s=self.texts_per_s,
                 encode_seconds=self.encode_seconds)
        return d


def shard_of(key: str, num_shards: int) -> int:
    """Deterministic part of a key for splitting work across processes (keys are sha256 hex)."""
    return int(key[:8], 16) % num_shards


def token_budget_batches(lengths: np.ndarray, batch_tokens: int, max_batch_size: int) -> list[np.ndarray]:
    """Indices sorted by length (longest first), cut so ``len(batch) * longest <= batch_tokens``.

    A text longer than the budget still gets a batch of its own.
    """
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        size = max(1, min(max_batch_size, batch_tokens // longest))
        batches.append(order[start:start + size])
        start += size
    return batches


def pad_batch(ids: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Lists of token ids -> ``(B, T)`` ids and attention mask, padded on ``side``."""
    T = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), T), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(ids), T), dtype=torch.long)  # (B, T)
    for i, x in enumerate(ids):
        if side == "left":
            input_ids[i, T - len(x):] = torch.tensor(x)
            mask[i, T - len(x):] = 1
        else:
            input_ids[i, :len(x)] = torch.tensor(x)
            mask[i, :len(x)] = 1
    return input_ids, mask


FP16_MAX = float(np.finfo(np.float16).max)


def _rows(first: np.ndarray | None, b: np.ndarray) -> torch.Tensor | None:
    """``(B,)`` first response tokens of batch rows ``b`` (None when not tracked)."""
    return None if first is None else torch.from_numpy(np.ascontiguousarray(first[b], dtype=np.int64))


def _pooled(encoder, ids, b, first, prefixes, float32: bool = False):
    """One forward pass over texts ``b``: ``{column: (B, D)}`` and ``{column: (P, D)}`` of their
    prefixes, as NumPy arrays on the host in the store's dtype, the prefixes' ``(text, slot)``
    and the padded batch's size in tokens."""
    input_ids, mask = pad_batch([ids[i] for i in b], encoder.pad_id, encoder.padding_side)
    args, which = prefix_args(b, prefixes)
    out = encoder.forward(input_ids, mask, _rows(first, b), float32=float32, **({"prefixes": args} if args else {}))
    pooled, pre = out if args else (out, {})
    out_dtype = torch.float16 if encoder.vector_dtype == "float16" else torch.float32
    # vectors in the store's dtype; the log-likelihood scalars (computed in float32) stay float32
    host = lambda v, c: v.to(out_dtype if "@" in c else torch.float32).cpu().numpy()  # noqa: E731
    return ({c: host(v, c) for c, v in pooled.items()}, {c: host(v, c) for c, v in pre.items()}, which,
            int(input_ids.numel()))


def _finite_rows(vectors: dict, n: int) -> np.ndarray:
    return np.all([np.isfinite(v).all(axis=1) for v in vectors.values()], axis=0) if vectors else np.ones(n, bool)


def encode_batches(encoder, ids: list[list[int]], n_tokens: np.ndarray, batch_tokens: int, max_batch_size: int,
                   first: np.ndarray | None = None, prefixes: list | None = None):
    """Run the encoder over token-budget batches; yield ``(indices, {column: (B, D) array},
    padded tokens, recomputed (B,) bool)``. Vectors come back rounded to the store's dtype, so
    a live score and a cached one go through exactly the same arithmetic. ``first`` (N,): each
    text's first response token, from :meth:`Encoder.tokenize` (None: every token).
    ``prefixes`` (N lists of ``(tokens, first response token)``): also pool each text's prefixes
    from its pass (a causal encoder); then a fifth item comes with each batch: ``(which,
    {column: (P, D)})``, ``which[p]`` = ``(text index, prefix slot)``.

    Rows whose half-precision states overflowed (NaN or Inf), or one of whose prefixes did, are
    run again in float32 and flagged; a row still non-finite then raises :class:`StoreError`: NaN
    or Inf never leaves.
    """
    for b in token_budget_batches(n_tokens, batch_tokens, max_batch_size):
        vectors, pre, which, padded = _pooled(encoder, ids, b, first, prefixes)
        owner = batch_rows(b, which)  # (P,) the batch row of each prefix's text
        bad = ~_finite_rows(vectors, len(b))  # (B,)
        if which:
            bad[owner[~_finite_rows(pre, len(which))]] = True
        if bad.any() and encoder.torch_dtype != torch.float32:
            redo = b[bad]
            fixed, fixed_pre, fixed_which, _ = _pooled(encoder, ids, redo, first, prefixes, float32=True)
            clip = (lambda v: np.clip(v, -FP16_MAX, FP16_MAX)) if encoder.vector_dtype == "float16" else (lambda v: v)
            for c, v in fixed.items():
                vectors[c][bad] = clip(v)
            slot = {w: p for p, w in enumerate(which)}
            for c, v in fixed_pre.items():
                pre[c][[slot[w] for w in fixed_which]] = clip(v)
            log.warning("%d texts overflowed in %s; recomputed in float32 and flagged recomputed_fp32",
                        int(bad.sum()), encoder.identity["dtype"])
        still = ~_finite_rows(vectors, len(b))
        if which:
            still[owner[~_finite_rows(pre, len(which))]] = True
        if still.any():
            raise StoreError(f"{int(still.sum())} texts gave non-finite hidden states even in float32 "
                             f"(batch rows {np.flatnonzero(still)[:5].tolist()}); nothing of them was stored")
        yield (b, vectors, padded, bad) + (((which, pre),) if prefixes is not None else ())


def encode_texts(encoder, texts: list[str], column: str, batch_tokens: int | None = None,
                 max_batch_size: int = 256, starts: list[int | None] | None = None,
                 special_tokens: bool | list[bool] = True) -> tuple[np.ndarray, np.ndarray]:
    """Vectors of ``texts`` (input order) for one feature — a column, or columns joined by '+'
    (concatenated, as a store's combined feature) — and their token counts; no store.
    ``starts``: where each response starts in its text (response_mean; None: texts as given);
    ``special_tokens``: whether the tokenizer adds its special tokens (the texts' recipe says)."""
    from ..store.columns import feature_parts

    parts = feature_parts(column)
    ids, n_tokens, _, first = encoder.tokenize(texts, starts, special_tokens)
    out = None
    budget = batch_tokens_for(encoder.device, batch_tokens)
    for b, vectors, _, _ in encode_batches(encoder, ids, n_tokens, budget, max_batch_size, first):
        v = np.concatenate([vectors[c] for c in parts], axis=1)  # (B, D · columns)
        if out is None:
            out = np.empty((len(texts), v.shape[1]), dtype=np.float32)  # (N, D)
        out[b] = v
    return out, n_tokens


def open_writer(cache_dir, encoder, vectors: dict, shard_rows: int, flush_seconds: float) -> ShardWriter:
    """A writer of ``encoder``'s store under ``cache_dir`` for the columns of ``vectors`` (one
    batch's ``{column: (B, D)}``). The store (and its encoder.json) is made only now, at the
    first vectors: a model that fails to load or run leaves no empty store behind for later
    hints to advertise."""
    dims = {v.shape[1] for c, v in vectors.items() if "@" in c}  # the vector columns (not logprob's scalars)
    if len(dims) != 1:
        raise StoreError(f"columns have different widths {sorted(dims)}; store them separately")
    fp = encoder.fingerprint
    store = VectorStore.open(cache_dir, fp, encoder.identity, create=True, spec=encoder.spec_record)
    return ShardWriter(store.dir, fp, encoder.identity, tuple(vectors), dims.pop(), encoder.vector_dtype,
                       shard_rows, flush_seconds, spec=encoder.spec_record)


def _digest(key: str):
    """What a key costs to remember: the 32 bytes of a sha256 hex key (a trace key), else itself."""
    if len(key) == 64 and key == key.lower():
        try:
            return bytes.fromhex(key)
        except ValueError:
            pass
    return key


def _key(digest) -> str:
    return digest.hex() if isinstance(digest, bytes) else digest


def _stream(texts) -> Iterable[tuple[str, str, int | None, bool, tuple]]:
    """``(key, text, response start, special tokens, prefixes)`` of a ``{key: text}`` mapping
    (texts as given: start 0, tokenized with special tokens, no prefixes), or of a re-iterable
    stream of ``(key, text)`` pairs, ``(key, text, start)`` triples, quadruples with the special
    tokens rule, or quintuples with the ``(key, text)`` of the text's step prefixes to store too
    (same start and rule; see :mod:`.prefixes`)."""
    items = texts.items() if isinstance(texts, Mapping) else texts
    for item in items:
        n = len(item)
        yield tuple(item) if n == 5 else (*item, ()) if n == 4 else (*item, True, ()) if n == 3 else (*item, 0, True, ())


class KeySet(set):
    """The digests of a stream's distinct keys, and which of them name only step prefixes."""

    def __init__(self):
        super().__init__()
        self.prefix_only: set = set()

    @property
    def prefixes(self) -> int:
        return len(self.prefix_only)


def distinct_keys(texts) -> KeySet:
    """Pass 1: the digest of every distinct key of ``texts``, step prefixes included (~100 bytes a
    text). Reading a streamed split validates every row, so a bad row stops the run before the
    model is loaded."""
    keys = KeySet()
    for item in _stream(texts):
        d = _digest(item[0])
        keys.add(d)
        keys.prefix_only.discard(d)
        for k, _ in item[4]:
            d = _digest(k)
            if d not in keys:
                keys.add(d)
                keys.prefix_only.add(d)
    return keys


def embed_texts(texts: Mapping[str, str] | Iterable[tuple], encoder, run: RunSpec,
                desc: str = "embed", keys: set | None = None) -> EmbedReport:
    """Embed the texts that ``run.cache_dir`` lacks for ``encoder``; return the report.

    ``texts`` is a ``{key: text}`` mapping or a re-iterable of ``(key, text)`` pairs,
    ``(key, text, response start)`` triples or ``(…, special tokens)`` quadruples in which a key may repeat (the first occurrence
    counts; :class:`~orm_cache.data.ingest.SplitTexts` reads a split from its file each time).
    The start is the character offset of the response in the text (None: unknown), which
    ``response_mean`` pools from and the store records; pairs and a mapping are texts as given
    (start 0). It is read for its keys (unless ``keys``, from :func:`distinct_keys`, is given),
    then again for the missing texts, which are embedded in chunks of ``run.chunk_texts``."""
    t0 = time.perf_counter()
    todo = distinct_keys(texts) if keys is None else keys  # becomes: the texts this process embeds
    steps = getattr(todo, "prefixes", 0) > 0
    if steps and encoder.spec.likelihood:
        from ..errors import ConfigError

        raise ConfigError("--steps with --likelihood is not supported: embed the step prefixes without it (the "
                          "likelihood of whole traces in another run)")
    n_texts, cached = len(todo), 0
    fp = encoder.fingerprint
    store = VectorStore(store_dir(run.cache_dir, fp), fp)
    every = list(todo)
    for a in range(0, len(every), run.chunk_texts):  # which are missing, and this process's
        part = every[a:a + run.chunk_texts]
        names = [_key(d) for d in part]
        missing = set(store.missing(names, encoder.spec.columns))  # lacking any column asked for
        for d, k in zip(part, names):
            if k not in missing:
                todo.discard(d)
                cached += 1
            elif run.num_shards > 1 and shard_of(k, run.num_shards) != run.shard_index and \
                    d not in getattr(todo, "prefix_only", ()):  # a prefix goes with its trace (pass 2)
                todo.discard(d)
    del every
    report = EmbedReport(fp, str(store.dir), n_texts, cached, len(todo), 0, 0, 0, 0, 0, 0.0)
    if not todo:
        report.seconds = time.perf_counter() - t0
        return report
    check_writable(store.dir)  # before the model loads and the work is done, not at the first shard
    if steps:
        from .model import check_causal

        check_causal(encoder.config, encoder.spec.model, "--steps")
    t_load = time.perf_counter()
    encoder.load()
    report.load_seconds = time.perf_counter() - t_load

    # Pass 2: the missing texts, a chunk at a time (the first time each key is met).
    writer = None
    bar = Progress(len(todo), desc, "text", run.quiet)
    budget = batch_tokens_for(encoder.device, run.batch_tokens)

    def embed_chunk(chunk: list[tuple]):
        nonlocal writer
        p = plan_chunk(encoder, chunk)  # this chunk's token ids only
        report.prefixes += p.pooled_prefixes
        report.prefixes_alone += p.alone
        for out in encode_batches(encoder, p.ids, p.n_tokens, budget, run.max_batch_size, p.first, p.prefixes):
            b, vectors, padded, recomputed = out[:4]
            if writer is None:
                writer = open_writer(run.cache_dir, encoder, vectors, run.shard_rows, run.flush_seconds)
            w = b[p.write[b]]  # the texts whose own rows are stored
            keep = p.write[b]
            writer.add([p.keys[i] for i in w], p.n_tokens[w], p.truncated[w], {c: v[keep] for c, v in vectors.items()},
                       recomputed[keep], [p.starts[i] for i in w])
            written = len(w)
            if len(out) > 4 and out[4][0]:
                which, pre = out[4]
                owner = batch_rows(b, which)
                keys, tokens, truncated, starts = p.prefix_rows(which)
                writer.add(keys, tokens, truncated, pre, recomputed[owner], starts)
                written += len(which)
            if encoder.pools_response:
                report.response_fallback += int((p.first[w] < 0).sum())
            if "logprob_tokens" in vectors:
                report.logprob_empty += int((vectors["logprob_tokens"][keep] == 0).sum())
            report.recomputed += int(recomputed.sum())
            report.embedded += len(b)
            report.batches += 1
            report.tokens += int(p.n_tokens[b].sum())
            report.padded_tokens += padded
            report.truncated += int(p.truncated[w].sum())
            bar.update(written)
            elapsed = time.perf_counter() - t0 - report.load_seconds
            bar.set_postfix_str(f"{report.tokens / max(elapsed, 1e-9):,.0f} tok/s")

    finished = False
    try:
        chunk: list[tuple] = []
        for key, text, start, special, prefixes in _stream(texts):
            if run.num_shards > 1 and shard_of(key, run.num_shards) != run.shard_index:
                continue  # another process's trace: its prefixes are pooled from its pass there
            d = _digest(key)
            write = d in todo
            todo.discard(d)
            need = []  # the prefixes this text's pass stores (each key once in the run)
            for k, t in prefixes:
                dk = _digest(k)
                if dk in todo:
                    todo.discard(dk)
                    need.append((k, t))
            if write or need:
                chunk.append((key, text, start, special, tuple(need), write))
                if len(chunk) >= run.chunk_texts:
                    embed_chunk(chunk)
                    chunk = []
        if chunk:
            embed_chunk(chunk)
        finished = True
    finally:
        bar.close(stopped=not finished)
        if writer is not None:
            writer.flush()  # whatever completed before an error is kept
            report.shards_written = [os.fspath(p) for p in writer.shards_written]
            report.shards = len(report.shards_written)
    report.seconds = time.perf_counter() - t0
    if report.response_fallback and any(p == "response_mean" for p in encoder.spec.pooling):
        log.warning("%d texts have no response tokens to pool (start unknown, or truncation removed the response): "
                    "their response_mean is the mean over every token", report.response_fallback)
    if report.logprob_empty:
        log.warning("%d texts have no response token to score (a one-token response with nothing before it, or a "
                    "response truncated away or not found): logprob stored as 0 with 0 tokens, left out of "
                    "orm-cache likelihood", report.logprob_empty)
    log.info("embedded %d texts into %s (%s)", report.embedded, store.dir, short(fp))
    return report
