"""One queue for the misses of every concurrent request, one thread that embeds them.

Requests hand their cache misses to :meth:`MissBatcher.submit` from the event loop and await
one future per text; the encoder thread takes up to ``batch_texts`` queued texts at a time
(after waiting at most ``max_wait`` seconds for more to arrive), embeds them in token-budget
batches sorted by length (:meth:`RewardCache.embed`, as ``embed`` does), and resolves the
futures through the loop. A text asked for by several requests at once is embedded once. The
queue is bounded (texts waiting, not requests): a full one is refused with :class:`Overloaded`,
which the server answers with 503 and Retry-After, so memory never grows with the load. The
event loop never runs the model.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from .reward import Texts

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """The miss queue is full (or the server is stopping): retry later."""


def _resolve(fut: asyncio.Future, value, error: BaseException | None) -> None:
    if fut.done():  # the request went away (its client disconnected): nothing to tell
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)


class MissBatcher:
    def __init__(self, embedder, max_queue: int = 8192, max_wait: float = 0.005,
                 batch_texts: int = 256, idle_flush: float = 5.0,
                 on_batch: Callable[[int, float], None] | None = None,
                 check_start: Callable[[str, object, object], None] = lambda key, start, known: None):
        self.embedder = embedder  # embed(Texts) -> scores; flush(), pending(), close()
        self.max_queue, self.max_wait, self.batch_texts = max_queue, max_wait, batch_texts
        self.idle_flush = idle_flush  # seconds idle before buffered vectors are written as a shard
        self.on_batch = on_batch  # called with (texts, seconds) after each embedding
        self._cv = threading.Condition()
        self._queue: dict[str, tuple[str, int | None, bool]] = {}  # key -> (text, start, special), in order
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future]]] = {}
        self._starts: dict[str, int | None] = {}  # key -> where its response starts, while it waits
        self.check_start = check_start  # refuses one text asked for with two response starts
        self._closing = False
        self.embedded = 0
        self.error: BaseException | None = None  # the last failure of the encoder thread
        self._thread = threading.Thread(target=self._run, name="orm-cache-encoder", daemon=True)
        self._thread.start()

    def depth(self) -> int:
        """Texts waiting for the encoder (not counting those it is embedding)."""
        return len(self._queue)

    def submit(self, t: Texts, idx: list[int]) -> list[asyncio.Future]:
        """Futures of the scores of texts ``idx`` of ``t`` (distinct keys), from the event loop."""
        loop = asyncio.get_running_loop()
        with self._cv:
            if self._closing:
                raise Overloaded("the server is stopping")
            new = sum(t.keys[i] not in self._waiters for i in idx)
            if new and len(self._queue) + new > self.max_queue:
                raise Overloaded(f"{len(self._queue):,} texts are waiting for the encoder (the limit is "
                                 f"{self.max_queue:,}, --max-queue)")
            for i in idx:  # one text, one split: the same key from another request must start where it does
                if t.keys[i] in self._starts:
                    self.check_start(t.keys[i], t.starts[i], self._starts[t.keys[i]])
            futures = []
            for i in idx:
                k = t.keys[i]
                if k not in self._waiters:  # else: queued or being embedded for another request
                    self._waiters[k] = []
                    self._starts[k] = t.starts[i]
                    self._queue[k] = (t.texts[i], t.starts[i], t.special[i])
                fut = loop.create_future()
                self._waiters[k].append((loop, fut))
                futures.append(fut)
            self._cv.notify()
        return futures

    def _take(self) -> Texts | None:
        """The next batch of queued texts (None: closing and nothing is left); waits for the first
        text, then at most ``max_wait`` for the batch to fill."""
        with self._cv:
            while not self._queue and not self._closing:
                if not self._cv.wait(self.idle_flush) and self.embedder.pending():
                    self._cv.release()  # writing a shard takes a while: let requests queue meanwhile
                    try:
                        self.embedder.flush()
                    except Exception as e:  # noqa: BLE001 (logged; the next flush tries again)
                        log.error("writing back failed: %s", e)
                    finally:
                        self._cv.acquire()
            if not self._queue:
                return None
            deadline = time.monotonic() + self.max_wait
            while len(self._queue) < self.batch_texts and not self._closing:
                left = deadline - time.monotonic()
                if left <= 0 or not self._cv.wait(left):
                    break
            keys = list(self._queue)[: self.batch_texts]
            items = [self._queue.pop(k) for k in keys]
        return Texts(keys, [x[0] for x in items], [x[1] for x in items], [x[2] for x in items])

    def _run(self) -> None:
        while (t := self._take()) is not None:
            t0 = time.perf_counter()
            error, scores = None, None
            try:
                scores = self.embedder.embed(t)
                self.embedded += len(t)
            except Exception as e:  # every waiting request gets the one-line error
                log.error("embedding %d texts failed: %s", len(t), e, exc_info=not getattr(e, "one_line", False))
                error = self.error = e
            if self.on_batch is not None:
                self.on_batch(len(t), time.perf_counter() - t0)
            with self._cv:
                waiters = [self._waiters.pop(k, []) for k in t.keys]
                for k in t.keys:
                    self._starts.pop(k, None)
            for j, ws in enumerate(waiters):
                value = None if scores is None else float(np.float32(scores[j]))
                for loop, fut in ws:
                    try:
                        loop.call_soon_threadsafe(_resolve, fut, value, error)
                    except RuntimeError:  # that loop is closed
                        pass

    def close(self, timeout: float | None = None) -> int:
        """Stop taking texts, embed what is queued, write every buffered vector; the rows written."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._thread.join(timeout)
        return self.embedder.close()
