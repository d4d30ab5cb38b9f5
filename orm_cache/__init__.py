"""orm-cache: pairwise outcome reward models over a frozen language model, with a vector cache.

Stage 1 runs the frozen encoder once per distinct trace and writes pooled vectors to Arrow
shards; stage 2 trains, sweeps and evaluates heads from those vectors alone. The use cases live
in :mod:`orm_cache.pipeline`; the most used are importable from here (loaded on first use, so
``import orm_cache`` stays light)::

    from orm_cache import LiveScorer, fit_head, sweep_heads, evaluate_split, DataSpec, EncoderSpec, HeadConfig
"""

__version__ = "0.1.0"

_EXPORTS = {
    "LiveScorer": "orm_cache.pipeline.live", "embed_splits": "orm_cache.pipeline.embed",
    "fit_head": "orm_cache.pipeline.fit", "sweep_heads": "orm_cache.pipeline.fit",
    "evaluate_split": "orm_cache.pipeline.evaluate", "verify_head": "orm_cache.pipeline.evaluate",
    "score_file": "orm_cache.pipeline.rescore", "rank_file": "orm_cache.pipeline.rescore",
    "DataSpec": "orm_cache.config", "EncoderSpec": "orm_cache.config", "HeadConfig": "orm_cache.config",
    "RunSpec": "orm_cache.config", "Head": "orm_cache.head",
}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'orm_cache' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
