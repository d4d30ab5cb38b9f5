"""The server's encoder in a process of its own.

A thread beside a busy event loop is not enough: the forward pass is hundreds of short torch
calls, each giving the GIL back and waiting to take it again, and an event loop answering
requests keeps it for up to the switch interval each time. Measured on the tiny OPT: 21 texts
embedded in 15 ms alone, in 60 ms to 1.5 s beside one busy Python thread. So the server runs
:meth:`RewardCache.embed` (encoder, head, write-back) in a child process (``spawn``: safe with
CUDA) and the batcher's thread only waits on a pipe.

Protocol (one request, one reply, in order): ``("embed", keys, texts, starts, special)``,
``("load",)``, ``("flush",)``, ``("stop",)`` -> ``("ok" | "error", {...})``; every reply says
whether the model is loaded, how many vectors wait to be written, how many were written, and
which keys went into a complete shard since the last reply (the parent then opens that shard
and stops answering those keys from memory). The child ignores SIGINT and SIGTERM (the parent
stops it with "stop" after draining) and, if the parent dies, writes what it holds and exits.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading

import numpy as np

from ..errors import UserError
from .reward import RewardCache, Texts

log = logging.getLogger(__name__)


class EncoderFailed(UserError):
    """The encoder process could not score a batch (the reason in one line)."""


def _child(conn, cache_args: dict) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    cache = RewardCache(**cache_args)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the server is gone: keep what was embedded
            cache.flush()
            return
        out, kind = {}, "ok"
        try:
            if msg[0] == "embed":
                out["scores"] = cache.embed(Texts(*msg[1:])).tolist()
            elif msg[0] == "load":
                cache.load()
            elif msg[0] in ("flush", "stop"):
                cache.flush()
        except Exception as e:  # noqa: BLE001 (one line to the waiting requests)
            kind = "error"
            out["error"] = str(e).splitlines()[0] if str(e) else type(e).__name__
            if not isinstance(e, UserError):
                log.exception("the encoder process failed")
        out.update(loaded=cache.model_loaded, pending=cache.pending(), written=cache.written,
                   durable=cache.take_durable(), write_error=cache.write_error, dropped=cache.dropped)
        conn.send((kind, out))
        if msg[0] == "stop":
            return


class EncoderProcess:
    """:meth:`embed`, :meth:`load`, :meth:`flush`, :meth:`close` of a :class:`RewardCache` built
    from ``cache_args`` in a child process; the scores it returns are remembered in ``cache``
    (the parent's, which answers hits) until their shard is readable."""

    def __init__(self, cache: RewardCache, cache_args: dict):
        self.cache, self.cache_args = cache, cache_args
        self.model_loaded, self.written, self._pending = False, 0, 0
        self.write_error, self.dropped = None, 0
        self._lock = threading.Lock()  # one request at a time on the pipe
        self._start()

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_child, args=(child, self.cache_args), name="orm-cache-encoder", daemon=True)
        self._proc.start()
        child.close()

    def _call(self, *msg) -> dict:
        with self._lock:
            try:
                self._conn.send(msg)
                kind, out = self._conn.recv()
            except (EOFError, OSError) as e:
                self._proc.join(5)
                code = self._proc.exitcode
                self._start()  # a fresh one for the next batch
                raise EncoderFailed(f"the encoder process died (exit status {code}); this batch was not scored, and "
                                    "the vectors it had not yet written are not in the store (answered from memory "
                                    "here, embedded again elsewhere); a new encoder process starts") from e
        self.model_loaded, self._pending, self.written = out["loaded"], out["pending"], out["written"]
        self.write_error, self.dropped = out["write_error"], out["dropped"]
        if msg[0] == "embed" and kind == "ok":
            self.cache.remember(list(msg[1]), out["scores"], list(msg[3]))  # before settling: a flush may hold them
        if out["durable"]:
            self.cache.settled(out["durable"])
        if kind == "error":
            raise EncoderFailed(out["error"])
        return out

    def embed(self, t: Texts) -> np.ndarray:
        return np.asarray(self._call("embed", t.keys, t.texts, t.starts, t.special)["scores"], dtype=np.float32)

    def load(self) -> None:
        self._call("load")

    def flush(self) -> int:
        self._call("flush")
        return self.written

    def pending(self) -> int:
        return self._pending

    def close(self) -> int:
        """Write what the child holds and stop it; the rows it wrote."""
        if self._proc.is_alive():
            try:
                self._call("stop")
            except EncoderFailed as e:
                log.error("%s", e)
            self._proc.join(60)
        return self.written
