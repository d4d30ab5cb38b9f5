"""The use cases, one module per command family, each a library function the CLI calls:

* :mod:`.embed` — stage 1 over splits (``embed``);
* :mod:`.fit` — ``fit-head`` and ``sweep``;
* :mod:`.evaluate` — ``eval`` and ``verify``;
* :mod:`.rescore` — ``score`` and ``rank``;
* :mod:`.live` — :class:`~.live.LiveScorer`, text to score end to end;
* :mod:`.export` — ``export`` and ``import-head``;
* :mod:`.demo` — the whole pipeline offline.

:mod:`.bind` binds a head or a data spec to its store and its texts, and :mod:`.vectors` reads a
split's cached vectors; both serve the use cases above. Nothing below this package imports it.
"""
