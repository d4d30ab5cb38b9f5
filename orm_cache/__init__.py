"""orm-cache: pairwise outcome reward models over a frozen language model, with a vector cache.

Stage 1 (:func:`orm_cache.encode.embed`) runs the frozen encoder once per distinct trace and
writes pooled vectors to Arrow shards; stage 2 (:mod:`orm_cache.head`, :mod:`orm_cache.evaluate`)
trains and evaluates the linear head from those vectors alone.
"""

__version__ = "0.1.0"
