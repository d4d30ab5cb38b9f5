"""The reward server's state, apart from HTTP: limits, metrics, and the :class:`Service` that
holds the cache (hits), the encoder process and the miss batcher (:mod:`.serve` puts it on
Starlette)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from .batcher import MissBatcher
from .reward import RewardCache, Texts


@dataclass
class Limits:
    max_body_bytes: int = 16 << 20
    max_texts: int = 4096  # texts per request
    max_text_chars: int = 200_000  # characters per built text
    max_queue: int = 8192  # miss texts waiting for the encoder, all requests together
    max_wait_ms: float = 5.0  # how long the encoder waits for a batch to fill
    batch_texts: int = 256  # texts per encoder call (then split by the token budget)
    body_seconds: float = 30.0  # a request's body must arrive within this (a slow client holds no slot for ever)


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class Metrics:
    """The server's Prometheus metrics, in a registry of its own."""

    def __init__(self, batcher_depth):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        self.requests = Counter("orm_cache_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "code"], registry=r)
        self.texts = Counter("orm_cache_texts", "Texts scored, by where the score came from (hit: the store; "
                             "miss: the encoder)", ["result"], registry=r)
        self.latency = Histogram("orm_cache_request_seconds", "Request latency by endpoint", ["endpoint"],
                                 buckets=(.001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5, 10, 30), registry=r)
        self.batch = Histogram("orm_cache_batch_texts", "Texts per encoder call (misses of all requests together)",
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=r)
        self.encode = Histogram("orm_cache_encode_seconds", "Seconds per encoder call",
                                buckets=(.01, .02, .05, .1, .2, .5, 1, 2, 5, 10, 30), registry=r)
        self.queue = Gauge("orm_cache_queue_depth", "Miss texts waiting for the encoder", registry=r)
        self.queue.set_function(batcher_depth)
        self.written = Gauge("orm_cache_written_back_rows", "Vectors this server wrote back to the store", registry=r)
        self.failing = Gauge("orm_cache_write_back_failing", "1 while the last write-back failed (scores are still "
                             "answered; /ready says why)", registry=r)
        self.loaded = Gauge("orm_cache_model_loaded", "1 once the encoder is loaded (after the first miss)",
                            registry=r)

    def on_batch(self, n: int, seconds: float) -> None:
        self.batch.observe(n)
        self.encode.observe(seconds)


class Service:
    """What the routes share: the cache, the batcher, the limits, the token and the metrics."""

    def __init__(self, cache_args: dict, limits: Limits, token: str | None, preload: bool = False,
                 answer_pattern: str | None = None):
        """``cache_args``: :class:`RewardCache`'s arguments (head, cache_dir, device, …), for this
        process's cache (hits) and the encoder process's (misses). ``answer_pattern``: the regex
        that finds /rank candidates' final answers when a request sends none (the operator's:
        a client's regex could take the event loop for ever)."""
        self.cache_args, self.limits, self.token, self.preload = cache_args, limits, token, preload
        self.answer_pattern = answer_pattern
        self.cache = RewardCache(**cache_args)  # answers hits; texts are built here
        # other writers' shards (embed, replicas) are looked for at most once a second, not on every
        # request with a miss; this server's own are opened as the encoder process reports them
        self.cache.store.relist_seconds = 1.0
        self.embedder = None
        self.batcher: MissBatcher | None = None
        self.metrics = Metrics(lambda: self.batcher.depth() if self.batcher else 0)
        self.ready = False
        self.announce = lambda: None  # says where it listens, once ready (run() sets it)

    def start(self) -> None:
        from .encoder_proc import EncoderProcess

        self.embedder = EncoderProcess(self.cache, self.cache_args)
        self.batcher = MissBatcher(self.embedder, self.limits.max_queue, self.limits.max_wait_ms / 1000,
                                   self.limits.batch_texts, on_batch=self.metrics.on_batch,
                                   check_start=self.cache.check_start)
        self.metrics.written.set_function(lambda: self.embedder.written)
        self.metrics.failing.set_function(lambda: 1.0 if self.write_error else 0.0)
        self.metrics.loaded.set_function(lambda: 1.0 if self.model_loaded else 0.0)

    @property
    def model_loaded(self) -> bool:
        return self.embedder is not None and self.embedder.model_loaded

    def stop(self) -> int:
        self.ready = False
        return self.batcher.close() if self.batcher else 0

    @property
    def write_error(self) -> str | None:
        return self.embedder.write_error if self.embedder is not None else None

    def check_size(self, n: int, what: str) -> None:
        if n > self.limits.max_texts:
            raise HTTPError(413, f"{n:,} {what} in one request; the limit is {self.limits.max_texts:,} (--max-texts)")

    def check_lengths(self, t: Texts) -> None:
        for i, text in enumerate(t.texts):
            if len(text) > self.limits.max_text_chars:
                raise HTTPError(413, f"text {i} has {len(text):,} characters; the limit is "
                                     f"{self.limits.max_text_chars:,} (--max-text-chars)")

    async def scores(self, t: Texts) -> tuple[np.ndarray, np.ndarray]:
        """``(N,)`` scores and ``(N,)`` bool: which came from the cache."""
        self.check_lengths(t)
        scores, todo = self.cache.lookup(t)
        hit = ~np.isnan(scores)
        if todo:
            futures = self.batcher.submit(t, todo)
            got = dict(zip((t.keys[i] for i in todo), await asyncio.gather(*futures)))
            for i in np.flatnonzero(~hit):
                scores[i] = got[t.keys[i]]
        self.metrics.texts.labels("hit").inc(int(hit.sum()))
        self.metrics.texts.labels("miss").inc(int((~hit).sum()))
        return scores, hit
