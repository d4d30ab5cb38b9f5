"""Use case ``embed``: stage 1 over one or more splits of a data spec, or over a list of texts.

The encoder is built once and its weights loaded once; under torch.distributed each rank embeds
its part of the missing keys.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..data.spec import DataSpec
from ..encode.spec import EncoderSpec, RunSpec
from ..encode.embedder import EmbedReport, distinct_keys, embed_texts  # noqa: F401 (EmbedReport: the result)
from ..errors import ConfigError


def embed(data: DataSpec | Iterable[str] | dict, encoder=None, run: RunSpec | None = None) -> EmbedReport:
    """Embed a split (``DataSpec``), a list of texts, or a ``{key: text}`` mapping into the store.

    ``encoder`` is an :class:`EncoderSpec` (loaded here) or an already-built encoder object.
    Only texts the store lacks are run through the model.
    """
    from ..data import trace_key
    from ..data.ingest import SplitData, SplitTexts
    from ..encode.model import Encoder

    run = run or RunSpec()
    if encoder is None or isinstance(encoder, EncoderSpec):
        encoder = Encoder(encoder or EncoderSpec(), run.device)
    if isinstance(data, DataSpec):
        texts = SplitTexts(data, getattr(encoder, "spec", None))
    elif isinstance(data, SplitData):  # a loaded split: its texts with where their responses start
        texts = data.items()
    elif isinstance(data, dict):
        texts = data
    else:
        texts = {trace_key(t): t for t in data}
    return embed_texts(texts, encoder, run)


def embed_splits(data_spec: DataSpec, enc_spec: EncoderSpec, run: RunSpec | None = None):
    """Stage 1 for each split of ``data_spec.split`` (comma-separated: ``train,validation,test``),
    yielding :func:`embed_split`'s ``(split, report, dist)`` per split. Every split is opened (its
    source found, its first row checked) before any work; the encoder is built once and its
    weights loaded once. An ``auto`` recipe is resolved on the first split and used for the others,
    so a split whose first row has another shape still gets the same texts and keys."""
    from dataclasses import replace

    from ..data.ingest import SplitTexts

    names = [s.strip() for s in str(data_spec.split).split(",")]
    if any(not n for n in names):
        raise ConfigError(f"--split {data_spec.split!r} has an empty name (write e.g. train,validation,test)")
    if not names:
        raise ConfigError(f"--split {data_spec.split!r} names no split")
    if len(set(names)) != len(names):
        raise ConfigError(f"--split {data_spec.split!r} names a split twice")
    for name in names:  # a missing split, or a bad first row, fails before any model is loaded
        SplitTexts(replace(data_spec, split=name), enc_spec)
    encoder, first = None, None
    for name in names:
        spec = replace(data_spec, split=name)
        if first is not None and data_spec.recipe_kind in (None, "auto", "trl"):
            spec = spec.with_recipe(first)
        split, report, dist = embed_split(spec, enc_spec, run, encoder)
        first = first or split.recipe
        encoder = getattr(split, "loaded", None)
        yield split, report, dist


def embed_split(data_spec: DataSpec, enc_spec: EncoderSpec, run: RunSpec | None = None, encoder=None):
    """Stage 1 for one split, the way the CLI runs it: returns ``(split, report, dist)``;
    ``split`` is the :class:`~orm_cache.data.ingest.SplitTexts` the texts streamed from (its
    source, kind and rows). No text of the split is held beyond one chunk.

    Under torch.distributed (``dist`` is a :class:`~orm_cache.encode.distributed.DistInfo`),
    this rank embeds its part of the missing keys on ``cuda:<local rank>`` (or the CPU) and
    the report's counts are summed over ranks; ``dist`` is None in a single process.
    """
    from dataclasses import replace

    from ..data.ingest import SplitTexts
    from ..encode.distributed import all_sum, dist_env, process_group
    from ..encode.model import Encoder, resolve_device

    run = run or RunSpec()
    data = SplitTexts(data_spec, enc_spec)
    keys = distinct_keys(data)  # every row read and checked before the model is
    dist_info = dist_env()
    if dist_info is None:
        data.loaded = encoder or Encoder(enc_spec, run.device)  # reused by the next split
        return data, embed_texts(data, data.loaded, run, f"embed {data_spec.split}", keys), None
    if run.num_shards > 1:
        raise ConfigError("--num-shards/--shard-index split work without torch.distributed; "
                         "under torchrun the ranks split it already")
    device = resolve_device(run.device)
    if device == "cuda":
        device = f"cuda:{dist_info.local_rank}"
    run = replace(run, num_shards=dist_info.world, shard_index=dist_info.rank, quiet=run.quiet or not dist_info.is_main)
    with process_group(device) as dist:
        encoder = Encoder(enc_spec, device)
        report = embed_texts(data, encoder, run, f"embed {data_spec.split} (rank 0 of {dist_info.world})", keys)
        dist.barrier()
        counts = ("assigned", "embedded", "batches", "tokens", "padded_tokens", "truncated", "recomputed",
                  "response_fallback", "logprob_empty", "shards", "prefixes", "prefixes_alone")
        summed = all_sum(dist, [getattr(report, c) for c in counts], device)
    for name, value in zip(counts, summed):
        setattr(report, name, value)
    report.ranks = dist_info.world
    return data, report, dist_info
