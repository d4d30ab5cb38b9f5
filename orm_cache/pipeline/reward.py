"""Rewards for other processes' texts: cache first, the encoder for the rest, written back.

:class:`RewardCache` is what the server (:mod:`.serve`) and the in-process reward function
share: it builds each request's texts with the head's recipe (the same text module, so the same
text, key and score as ``orm-cache score``), answers the texts whose vectors the store holds
without any model, and embeds the rest (:meth:`RewardCache.embed`, called with many callers'
misses at once by the server's batcher), writing their vectors back to the store as complete
shards so a restarted server and ``orm-cache embed`` see them.

:class:`OrmReward` is a reward function in TRL's shape, ``reward(prompts, completions) ->
list[float]`` (GRPOTrainer's ``reward_funcs``): local (a :class:`RewardCache` in this process)
or remote (a server URL and its token)::

    from orm_cache.pipeline.reward import OrmReward
    reward = OrmReward("head.pt")                                    # in-process, cache-aware
    reward = OrmReward(url="http://10.0.0.5:8000", token="…")        # a running orm-cache serve
    GRPOTrainer(model=…, reward_funcs=[reward], …)
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import threading
from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from ..head import Head
from .rescore import Rescorer, TextColumns

log = logging.getLogger(__name__)


@dataclass
class Texts:
    """One request's texts as the head's recipe builds them: ``keys[i]`` names ``texts[i]``,
    whose response starts at ``starts[i]`` and which the tokenizer reads with ``special[i]``."""

    keys: list[str]
    texts: list[str]
    starts: list[int | None]
    special: list[bool]

    def __len__(self) -> int:
        return len(self.keys)


class RewardCache:
    """Scores texts by one head: from the store when it holds their vectors, else by the head's
    encoder (loaded on the first miss), whose vectors are written back to the store.

    Thread-safe: the store is read under a lock that :meth:`embed` takes only to make a written
    shard readable (the shard itself is written under another), so one thread (the server's
    event loop) answers hits while another embeds and writes.
    """

    def __init__(self, head: Head | str, cache_dir="cache", device: str = "auto", batch_tokens: int | None = None,
                 write_back: bool = True, store: str | None = None, feature: str | None = None,
                 shard_rows: int = 1024, flush_seconds: float = 10.0, max_batch_size: int = 256,
                 fresh_limit: int = 100_000):
        head = head if isinstance(head, Head) else Head.load(head)
        from .joined import is_joined

        if is_joined(head):
            from ..errors import ConfigError

            raise ConfigError(f"this head reads several encoders ({head.feature}); the server and OrmReward serve heads "
                              "over one encoder: score it with orm-cache score/rank or LiveScorer")
        self.rescorer = Rescorer(head, cache_dir, device, batch_tokens, True, store, feature)
        self.head = self.rescorer.head
        self.parts = self.head.feature.split("+")
        self.builder = TextColumns().builder_for(self.head)  # what `orm-cache score` builds texts with
        self.write_back = write_back
        self.shard_rows, self.flush_seconds, self.max_batch_size = shard_rows, flush_seconds, max_batch_size
        self.fresh_limit = fresh_limit
        self._lock = threading.RLock()  # the store and _fresh
        self._write_lock = threading.Lock()  # the writer and _buffered
        self._fresh: dict[str, tuple[float, int | None]] = {}  # embedded, not yet in a readable shard: key -> (score, start)
        self._buffered: list[str] = []  # keys the writer holds, not yet in a shard
        self.durable: list[str] = []  # keys written into shards, not yet reported (take_durable)
        self.write_error: str | None = None  # why the last write-back failed (None: it did not)
        self.dropped = 0  # vectors given up after write-back kept failing
        self.pools_response = "response_mean@" in self.head.feature
        self._writer = None
        self.written = 0  # rows in shards this process wrote

    @property
    def store(self):
        return self.rescorer.store

    @property
    def model_loaded(self) -> bool:
        enc = self.rescorer._encoder
        return enc is not None and enc.model is not None

    # -- texts -----------------------------------------------------------------------------------
    def _texts(self, built: list[tuple[str, int | None]]) -> Texts:
        from .vectors import check_known_starts

        check_known_starts([s for _, s in built], self.head.feature, "a text given whole")
        special = self.builder.special_tokens
        texts = [t for t, _ in built]
        return Texts([self.builder.key(t) for t in texts], texts, [s for _, s in built], [special] * len(texts))

    def texts(self, responses, prompts=None, partial: bool = False) -> Texts:
        """Responses (strings or conversations) with their prompts, as :class:`LiveScorer` takes them;
        ``partial``: unfinished traces (search-tree nodes), as :meth:`LiveScorer.score_prefixes` builds them."""
        from .live import build_texts

        return self._texts(build_texts(self.builder, self.head, responses, prompts, prefix=partial))

    def rows(self, rows: list, partial: bool = False) -> Texts:
        """Rows of any shape ``orm-cache score`` reads (``text``/``messages``/``completion`` with
        an optional prompt column), one text each; ``partial``: unfinished traces."""
        if not isinstance(rows, list):
            raise DataError(f"rows must be a list of objects, got {type(rows).__name__}")
        built = []
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise DataError(f"row {i} must be an object, got {type(row).__name__}")
            built.append(self.builder.row_text(row, f"row {i}", prefix=partial))
        return self._texts(built)

    def whole(self, texts: list) -> Texts:
        """Texts already rendered whole (OpenRLHF's ``query``: prompt and response as the policy
        wrote them), each one text as it is, as a row with only a ``text`` column is scored."""
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise DataError("query must be a list of strings (each a whole rendered text)")
        return self._texts([self.builder.build(t, None, f"query {i}", "query") for i, t in enumerate(texts)])

    # -- scores ----------------------------------------------------------------------------------
    def check_start(self, key: str, start, known) -> None:
        """Refuse a text whose response starts elsewhere than where the same text's (same key's)
        known vector was pooled from (``known``): under a response-pooling head its key would name
        another text's vector (a :class:`ResponseStartConflict`, as the store refuses it)."""
        if self.pools_response and start != known:
            from .vectors import ResponseStartConflict, describe_start

            raise ResponseStartConflict(
                f"key {key[:16]}…: the same text split into prompt and response another way (response at "
                f"{describe_start(start)} here, {describe_start(known)} in the vector just pooled); "
                f"{self.head.feature} pools the response only, so one text can have one split")

    def lookup(self, t: Texts) -> tuple[np.ndarray, list[int]]:
        """``(N,)`` float32 scores of the texts the store (or this process's recent misses) holds,
        NaN elsewhere, and the indices of the rest (each distinct key once: its first index)."""
        scores = np.full(len(t), np.nan, dtype=np.float32)
        with self._lock:
            rest = []
            for i, k in enumerate(t.keys):
                got = self._fresh.get(k)
                if got is None:
                    rest.append(i)
                else:
                    self.check_start(k, t.starts[i], got[1])
                    scores[i] = got[0]
            missing = set(self.store.missing([t.keys[i] for i in rest], self.parts)) if rest else set()
            hit = [i for i in rest if t.keys[i] not in missing]
            if hit:
                scores[hit] = self.rescorer.stored_scores([t.keys[i] for i in hit],
                                                          {t.keys[i]: t.starts[i] for i in hit})
        first, seen = [], {}
        for i in rest:
            k = t.keys[i]
            if k in missing:
                if k in seen:
                    self.check_start(k, t.starts[i], t.starts[seen[k]])
                else:
                    seen[k] = i
                    first.append(i)
        return scores, first

    def embed(self, t: Texts) -> np.ndarray:
        """``(N,)`` scores of texts by the head's encoder (loaded now if need be), each from its
        vector rounded to the store's precision, so the score equals the one the written-back
        vector gives later, bit for bit. Writes the vectors back unless ``write_back`` is off."""
        from ..encode.embedder import encode_batches
        from ..encode.spec import batch_tokens_for

        encoder = self.rescorer.encoder
        encoder.load()
        ids, n_tokens, truncated, first = encoder.tokenize(t.texts, t.starts, t.special)
        budget = batch_tokens_for(encoder.device, self.rescorer.batch_tokens)
        scores = np.empty(len(t), dtype=np.float32)
        for b, vectors, _, recomputed in encode_batches(encoder, ids, n_tokens, budget, self.max_batch_size, first):
            X = np.concatenate([vectors[c] for c in self.parts], axis=1).astype(np.float32)  # (B, D), exact
            scores[b] = self.head.score(X)
            keys = [t.keys[i] for i in b]
            self.remember(keys, scores[b], [t.starts[i] for i in b])
            if self.write_back:
                with self._write_lock:  # a shard may be written now: readers (self._lock) go on meanwhile
                    writer = self._writer_for(encoder, vectors)
                    self._buffered.extend(keys)
                    self._writing(lambda: writer.add(keys, n_tokens[b], truncated[b], vectors, recomputed,
                                                     [t.starts[i] for i in b]))
        return scores

    def _writing(self, write) -> None:
        """(Under the write lock.) ``write()`` (an add that may write a shard, or a flush); a shard
        that cannot be written does not fail the scores: the error is kept (``write_error``), the
        vectors stay buffered for the next try, and beyond ``8 x shard_rows`` of them the oldest
        are dropped (they are embedded again when next asked for)."""
        from ..errors import StoreError

        try:
            write()
        except StoreError as e:
            if self.write_error is None:
                log.error("write-back failed, scores are still answered: %s", e)
            self.write_error = str(e).splitlines()[0]
            if self._writer.buffered > 8 * self.shard_rows:
                self.dropped += self._writer.buffered
                self._writer._reset()
                self._buffered = []
            return
        self.write_error = None
        self._after_write()

    def score(self, t: Texts) -> np.ndarray:
        """``(N,)`` scores: hits from the store, misses embedded now (in this thread)."""
        scores, todo = self.lookup(t)
        if todo:
            sub = Texts(*([getattr(t, f)[i] for i in todo] for f in ("keys", "texts", "starts", "special")))
            got = dict(zip(sub.keys, self.embed(sub).tolist()))
            for i, k in enumerate(t.keys):
                if np.isnan(scores[i]):
                    scores[i] = got[k]
        return scores

    # -- write-back ------------------------------------------------------------------------------
    def _writer_for(self, encoder, vectors):
        if self._writer is None:
            from ..encode.embedder import open_writer

            self._writer = open_writer(self.rescorer.cache_dir, encoder, vectors, self.shard_rows, self.flush_seconds)
        return self._writer

    def _after_write(self) -> None:
        """(Under the write lock.) Once the writer has written its buffer as a shard: open the
        shard, and forget the scores of the keys it holds (they are hits from now on)."""
        if self._writer is not None and self._writer.buffered == 0 and self._buffered:
            self.settled(self._buffered)
            self.durable.extend(self._buffered)
            self._buffered = []
            self.written = self._writer.rows_written

    def remember(self, keys: list[str], scores, starts: list) -> None:
        """Scores of texts just embedded (and where their responses start), answered from memory
        until their shard is readable (:meth:`settled`); at most the ``fresh_limit`` most recent
        (an older one is embedded again if asked for before its shard is readable)."""
        with self._lock:
            self._fresh.update(zip(keys, zip(np.asarray(scores, dtype=np.float32).tolist(), starts)))
            if len(self._fresh) > self.fresh_limit:
                for k in list(itertools.islice(self._fresh, len(self._fresh) - self.fresh_limit)):
                    del self._fresh[k]

    def settled(self, keys: list[str]) -> None:
        """``keys`` are in a complete shard now: open it, and answer them from the store."""
        with self._lock:
            self.store.refresh()
            for k in keys:
                self._fresh.pop(k, None)

    def take_durable(self) -> list[str]:
        """The keys written into shards since the last call."""
        with self._write_lock:
            out, self.durable = self.durable, []
        return out

    def flush(self) -> int:
        """Write the buffered vectors as a shard now (the server calls it when idle and at exit);
        the rows written so far."""
        with self._write_lock:
            if self._writer is not None:
                self._writing(self._writer.flush)
            return self.written

    def pending(self) -> int:
        """Vectors embedded but not yet in a shard."""
        return self._writer.buffered if self._writer is not None else 0

    def load(self) -> None:
        """Load the encoder now (else: on the first miss)."""
        self.rescorer.encoder.load()

    def close(self) -> int:
        return self.flush()


class OrmReward:
    """A reward function for TRL's GRPOTrainer (``reward_funcs=[OrmReward(…)]``) and any caller
    with prompts and completions: ``reward(prompts=…, completions=…) -> list[float]``.

    Prompts and completions are strings or conversations (TRL's conversational shape: the
    prompt's messages and the completion's assistant turn), built into texts by the head's
    recipe exactly as ``orm-cache score`` and the server build them. Local (``head``): a
    :class:`RewardCache` in this process (hits from the store, misses embedded here and written
    back). Remote (``url``): ``POST {url}/score`` of a running ``orm-cache serve``, with ``token``
    (default: the ``ORM_CACHE_TOKEN`` environment variable)."""

    def __init__(self, head: Head | str | None = None, *, url: str | None = None, token: str | None = None,
                 cache_dir="cache", device: str = "auto", write_back: bool = True, timeout: float = 300.0):
        if (head is None) == (url is None):
            raise ValueError("give a head (score in this process) or a server url, not both")
        self.__name__ = "orm_cache"  # TRL names each reward function's logged column by it
        self.url = url.rstrip("/") if url else None
        self.token = token if token is not None else os.environ.get("ORM_CACHE_TOKEN")
        self.timeout = timeout
        self.cache = RewardCache(head, cache_dir, device, write_back=write_back) if head is not None else None
        self._client = None
        if self.cache is not None:
            atexit.register(self.cache.flush)  # what was embedded is kept when the trainer exits

    def __call__(self, prompts=None, completions=None, **kwargs) -> list[float]:
        if completions is None:
            raise TypeError("completions are required: reward(prompts=…, completions=…)")
        if self.cache is not None:
            return self.cache.score(self.cache.texts(completions, prompts)).tolist()
        body = {"texts": list(completions)}
        if prompts is not None:
            body["prompts"] = list(prompts)
        return self.post("/score", body)["scores"]

    def post(self, path: str, body: dict) -> dict:
        """One JSON request to the server; its one-line error raised as a RuntimeError."""
        import httpx

        if self._client is None:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            self._client = httpx.Client(base_url=self.url, headers=headers, timeout=self.timeout)
        r = self._client.post(path, json=body)
        if r.status_code != 200:
            try:
                why = r.json().get("error", r.text)
            except ValueError:
                why = r.text
            raise RuntimeError(f"{self.url}{path}: HTTP {r.status_code}: {why}")
        return r.json()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        if self.cache is not None:
            self.cache.flush()
