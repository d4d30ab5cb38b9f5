"""The stage-1 driver: embed every distinct text the store lacks, once, in length-sorted batches.

Work is proportional to *distinct missing* texts: keys already in the store are skipped before
the model is even loaded. Texts are tokenized once, sorted by length (longest first, so an
out-of-memory shows at once) and cut into batches whose padded size stays under a token budget;
only the pooled ``(B, D)`` rows travel back to the host.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..config import RunSpec, batch_tokens_for
from ..progress import Progress
from ..store import ShardWriter, StoreError, VectorStore, short

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


def encode_batches(encoder, ids: list[list[int]], n_tokens: np.ndarray, batch_tokens: int, max_batch_size: int):
    """Run the encoder over token-budget batches; yield ``(indices, {column: (B, D) array},
    padded tokens, recomputed (B,) bool)``. Vectors come back rounded to the store's dtype, so
    a live score and a cached one go through exactly the same arithmetic.

    Rows whose half-precision states overflowed (NaN or Inf) are run again in float32 and
    flagged; a row still non-finite then raises :class:`StoreError`: NaN or Inf never leaves.
    """
    out_dtype = torch.float16 if encoder.vector_dtype == "float16" else torch.float32
    for b in token_budget_batches(n_tokens, batch_tokens, max_batch_size):
        input_ids, mask = pad_batch([ids[i] for i in b], encoder.pad_id, encoder.padding_side)
        pooled = encoder.forward(input_ids, mask)  # {column: (B, D)} on the device
        vectors = {c: v.to(out_dtype).cpu().numpy() for c, v in pooled.items()}
        bad = ~np.all([np.isfinite(v).all(axis=1) for v in vectors.values()], axis=0)  # (B,)
        if bad.any() and encoder.torch_dtype != torch.float32:
            redo = b[bad]
            r_ids, r_mask = pad_batch([ids[i] for i in redo], encoder.pad_id, encoder.padding_side)
            fixed = encoder.forward(r_ids, r_mask, float32=True)
            for c, v in fixed.items():
                v = v.float().cpu().numpy()
                if out_dtype == torch.float16:
                    v = np.clip(v, -FP16_MAX, FP16_MAX)
                vectors[c][bad] = v
            log.warning("%d texts overflowed in %s; recomputed in float32 and flagged recomputed_fp32",
                        int(bad.sum()), encoder.identity["dtype"])
        still = ~np.all([np.isfinite(v).all(axis=1) for v in vectors.values()], axis=0)
        if still.any():
            raise StoreError(f"{int(still.sum())} texts gave non-finite hidden states even in float32 "
                             f"(batch rows {np.flatnonzero(still)[:5].tolist()}); nothing of them was stored")
        yield b, vectors, int(input_ids.numel()), bad


def encode_texts(encoder, texts: list[str], column: str, batch_tokens: int | None = None,
                 max_batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Vectors of ``texts`` (input order) for one column, and their token counts; no store."""
    ids, n_tokens, _ = encoder.tokenize(texts)
    out = None
    budget = batch_tokens_for(encoder.device, batch_tokens)
    for b, vectors, _, _ in encode_batches(encoder, ids, n_tokens, budget, max_batch_size):
        v = vectors[column]
        if out is None:
            out = np.empty((len(texts), v.shape[1]), dtype=np.float32)  # (N, D)
        out[b] = v
    return out, n_tokens


def embed_texts(texts: dict[str, str], encoder, run: RunSpec, desc: str = "embed") -> EmbedReport:
    """Embed the texts (key -> text) that ``run.cache_dir`` lacks for ``encoder``; return the report."""
    t0 = time.perf_counter()
    fp = encoder.fingerprint
    store = VectorStore.open(run.cache_dir, fp, encoder.identity, create=True, spec=encoder.spec_record)
    missing = store.missing(texts)
    cached = len(texts) - len(missing)
    if run.num_shards > 1:
        missing = [k for k in missing if shard_of(k, run.num_shards) == run.shard_index]
    report = EmbedReport(fp, str(store.dir), len(texts), cached, len(missing), 0, 0, 0, 0, 0, 0.0)
    if not missing:
        report.seconds = time.perf_counter() - t0
        return report
    t_load = time.perf_counter()
    encoder.load()
    report.load_seconds = time.perf_counter() - t_load

    ids, n_tokens, truncated = encoder.tokenize([texts[k] for k in missing])
    writer = None
    bar = Progress(len(missing), desc, "text", run.quiet)
    try:
        budget = batch_tokens_for(encoder.device, run.batch_tokens)
        for b, vectors, padded, recomputed in encode_batches(encoder, ids, n_tokens, budget, run.max_batch_size):
            if writer is None:
                dims = {v.shape[1] for v in vectors.values()}
                if len(dims) != 1:
                    raise StoreError(f"columns have different widths {sorted(dims)}; store them separately")
                writer = ShardWriter(store.dir, fp, encoder.identity, tuple(vectors), dims.pop(),
                                     encoder.vector_dtype, run.shard_rows, run.flush_seconds,
                                     spec=encoder.spec_record)
            writer.add([missing[i] for i in b], n_tokens[b], truncated[b], vectors, recomputed)
            report.recomputed += int(recomputed.sum())
            report.embedded += len(b)
            report.batches += 1
            report.tokens += int(n_tokens[b].sum())
            report.padded_tokens += padded
            report.truncated += int(truncated[b].sum())
            bar.update(len(b))
            elapsed = time.perf_counter() - t0 - report.load_seconds
            bar.set_postfix_str(f"{report.tokens / max(elapsed, 1e-9):,.0f} tok/s")
    finally:
        bar.close()
        if writer is not None:
            writer.flush()  # whatever completed before an error is kept
            report.shards_written = [os.fspath(p) for p in writer.shards_written]
            report.shards = len(report.shards_written)
    report.seconds = time.perf_counter() - t0
    log.info("embedded %d texts into %s (%s)", report.embedded, store.dir, short(fp))
    return report
