"""``orm-cache serve``: a head's rewards over HTTP, cache first (Starlette on uvicorn).

Endpoints (JSON in and out; every POST needs ``Authorization: Bearer TOKEN`` when the server
has a token):

* ``POST /score`` ``{"texts": [...], "prompts": [...]}`` (strings or conversations, as
  ``LiveScorer.score`` takes them) or ``{"rows": [{...}, ...]}`` (rows of any shape ``orm-cache
  score`` reads) -> ``{"scores": [...], "hits": H, "misses": M}``;
* ``POST /rank`` ``{"prompt": P, "candidates": [...]}`` (and ``"aggregate"``: best, vote or
  weighted-vote, with ``"answers"``: one final answer or null per candidate, or the server's
  ``--answer-pattern``) -> ``{"order": [...], "scores": [...], "best": i, "aggregate": A}`` (with
  answers also ``answer``, ``weight``, ``share``, ``tied``, ``answers``);
* ``POST /get_reward`` OpenRLHF's remote reward protocol: ``{"query": [...]}`` (whole rendered
  texts; ``prompts`` and ``labels`` may come too and are not needed) ->
  ``{"rewards": [...], "scores": [...], "extra_logs": {"cache_hit": [...]}}``;
* ``GET /health`` (alive) and ``GET /ready`` (answers scores), without a token for probes;
  ``GET /metrics`` (Prometheus) and ``GET /`` (what is served), with it.

Texts are built by the head's recipe (:class:`.reward.RewardCache`), so a text scored here has
the key and score ``orm-cache score`` gives it. Hits are answered from the store on the event
loop; misses go to one queue for every request (:class:`.batcher.MissBatcher`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager

import numpy as np

from ..errors import DataError, RecipeError, StoreError, UserError
from .batcher import Overloaded
from .reward import Texts
from .service import HTTPError, Limits, Service  # noqa: F401 (Limits: part of this module's interface)

log = logging.getLogger(__name__)


def _line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _check_auth(request, token: str | None) -> None:
    if token is None:
        return
    got = request.headers.get("authorization", "")
    scheme, _, value = got.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
        raise HTTPError(401, "missing or wrong bearer token (Authorization: Bearer TOKEN)",
                        {"WWW-Authenticate": "Bearer"})


async def _read_json(request, limit: int, seconds: float = 30.0) -> dict:
    size = request.headers.get("content-length")
    if size is not None and (not size.isdigit() or int(size) > limit):
        raise HTTPError(413, f"the body has {size} bytes; the limit is {limit:,} (--max-body-mb)")
    body = bytearray()

    async def read():
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise HTTPError(413, f"the body exceeds the limit of {limit:,} bytes (--max-body-mb)")

    try:
        await asyncio.wait_for(read(), seconds)
    except asyncio.TimeoutError:
        raise HTTPError(408, f"the body did not arrive within {seconds:g} s (--body-timeout)") from None
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise HTTPError(400, f"the body is not JSON: {str(e)[:200]}") from None
    if not isinstance(data, dict):
        raise HTTPError(400, f"the body must be a JSON object, got {type(data).__name__}")
    return data


def _fields(data: dict, allowed: set, endpoint: str) -> None:
    extra = sorted(set(data) - allowed)
    if extra:
        raise HTTPError(400, f"{endpoint}: unknown field(s) {extra}; it takes {sorted(allowed)}")


def _texts_of(service: Service, data: dict) -> Texts:
    cache = service.cache
    partial = data.get("partial") or False
    if not isinstance(partial, bool):
        raise HTTPError(400, "partial must be true (the traces are unfinished: search-tree nodes) or false")
    if "rows" in data:
        _fields(data, {"rows", "partial"}, "/score")
        rows = data["rows"]
        service.check_size(len(rows) if isinstance(rows, list) else 0, "rows")
        return cache.rows(rows, partial)
    _fields(data, {"texts", "prompts", "partial"}, "/score")
    if "texts" not in data:
        raise HTTPError(400, "/score takes {\"texts\": [...], \"prompts\": [...]} or {\"rows\": [{...}]}")
    texts, prompts = data["texts"], data.get("prompts")
    if not isinstance(texts, list) or (prompts is not None and not isinstance(prompts, list)):
        raise HTTPError(400, "texts (and prompts) must be lists: one string or conversation per text")
    service.check_size(len(texts), "texts")
    return cache.texts(texts, prompts, partial)


def create_app(service: Service):
    """The Starlette application of ``service``."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect
    from starlette.responses import JSONResponse, Response

    from .vectors import ResponseStartConflict
    from starlette.routing import Route

    m = service.metrics

    def route(path: str, method: str = "POST", auth: bool = True):
        def wrap(handler):
            async def endpoint(request):
                t0 = time.perf_counter()
                try:
                    if auth:
                        _check_auth(request, service.token)
                    response = await handler(request)
                except HTTPError as e:
                    response = JSONResponse({"error": e.message}, e.status, e.headers)
                except Overloaded as e:
                    response = JSONResponse({"error": f"overloaded: {e}; retry later"}, 503, {"Retry-After": "1"})
                except (DataError, RecipeError, TypeError) as e:  # a request the recipe cannot take: the caller's
                    response = JSONResponse({"error": _line(e)}, 400)
                except ResponseStartConflict as e:  # one text, split two ways: the caller's, and the store's state
                    response = JSONResponse({"error": _line(e)}, 409)
                except ClientDisconnect:  # gone before its body arrived: no one to answer (nginx's 499)
                    response = JSONResponse({"error": "client disconnected"}, 499)
                except UserError as e:  # the encoder, the store or the head failed: ours, in one line
                    log.error("%s: %s", path, _line(e))
                    response = JSONResponse({"error": _line(e)}, 500)
                except Exception as e:  # noqa: BLE001 (one line to the client, the traceback to the log)
                    log.exception("%s failed", path)
                    response = JSONResponse({"error": f"internal error: {type(e).__name__}: {e}"[:500]}, 500)
                m.requests.labels(path, str(response.status_code)).inc()
                m.latency.labels(path).observe(time.perf_counter() - t0)
                return response

            return Route(path, endpoint, methods=[method])
        return wrap

    lim = service.limits

    async def score(request):
        t = _texts_of(service, await _read_json(request, lim.max_body_bytes, lim.body_seconds))
        s, hit = await service.scores(t)
        return JSONResponse({"scores": s.tolist(), "hits": int(hit.sum()), "misses": int((~hit).sum())})

    async def rank(request):
        from ..errors import ConfigError
        from ..evaluate.vote import candidate_answers, check_aggregate, ranking

        data = await _read_json(request, lim.max_body_bytes, lim.body_seconds)
        _fields(data, {"prompt", "candidates", "aggregate", "answers"}, "/rank")
        candidates, prompt = data.get("candidates"), data.get("prompt")
        aggregate, answers = data.get("aggregate") or "best", data.get("answers")
        if not isinstance(candidates, list) or not candidates:
            raise HTTPError(400, "/rank takes {\"prompt\": P, \"candidates\": [...]} with at least one candidate")
        service.check_size(len(candidates), "candidates")
        pattern = service.answer_pattern if answers is None else None
        try:
            check_aggregate(aggregate, answers is not None or pattern is not None)
        except ConfigError as e:
            raise HTTPError(400, f"/rank: {_line(e)}") from None
        t = service.cache.texts(candidates, None if prompt is None else [prompt] * len(candidates))
        try:  # a pattern's searches run beside the event loop (they release the GIL) and are bounded in time
            built = list(zip(t.texts, t.starts))
            found = (await asyncio.to_thread(candidate_answers, built, None, pattern) if pattern is not None
                     else candidate_answers(built, answers))
        except DataError:
            if answers is not None or aggregate != "best":
                raise
            found = None  # the server's pattern found no answer, and none was needed
        s, hit = await service.scores(t)
        return JSONResponse({**ranking(s, found, aggregate, service.cache.head.temperature),
                             "hits": int(hit.sum()), "misses": int((~hit).sum())})

    async def get_reward(request):
        data = await _read_json(request, lim.max_body_bytes, lim.body_seconds)
        _fields(data, {"query", "prompts", "labels"}, "/get_reward")
        query, prompts = data.get("query"), data.get("prompts")
        if not isinstance(query, list):
            raise HTTPError(400, "/get_reward takes {\"query\": [text, ...]} (OpenRLHF's remote reward protocol)")
        if prompts is not None and (not isinstance(prompts, list) or len(prompts) != len(query)
                                    or not all(p is None or isinstance(p, str) for p in prompts)):
            raise HTTPError(400, "/get_reward: prompts, when sent, must be one string (or null) per query; "
                                 "they are not needed (each query is scored whole)")
        service.check_size(len(query), "queries")
        s, hit = await service.scores(service.cache.whole(query))
        rewards = s.tolist()
        return JSONResponse({"rewards": rewards, "scores": rewards, "extra_logs": {"cache_hit": hit.astype(float).tolist()}})

    async def not_found(request, exc):
        return JSONResponse({"error": f"{request.method} {request.url.path}: {exc.detail}"}, exc.status_code,
                            getattr(exc, "headers", None))

    async def health(request):
        return JSONResponse({"status": "ok"})

    async def ready(request):
        if not service.ready:
            return JSONResponse({"ready": False}, 503, {"Retry-After": "1"})
        return JSONResponse({"ready": True, "model_loaded": service.model_loaded,
                             "queue_depth": service.batcher.depth(), "write_back_error": service.write_error})

    async def metrics(request):
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)

    async def info(request):
        c = service.cache
        return JSONResponse({"head": c.head.source, "feature": c.head.feature, "recipe": c.builder.recipe.kind,
                             "store": str(c.store.dir), "vectors": len(c.store), "model_loaded": service.model_loaded,
                             "write_back": c.write_back,
                             "endpoints": ["POST /score", "POST /rank", "POST /get_reward", "GET /health",
                                           "GET /ready", "GET /metrics"]})

    @asynccontextmanager
    async def lifespan(app):
        service.start()
        if service.preload:
            await asyncio.get_running_loop().run_in_executor(None, service.embedder.load)
        service.ready = True
        service.announce()  # once it answers: the model is loaded first with --preload
        try:
            yield
        finally:
            written = await asyncio.get_running_loop().run_in_executor(None, service.stop)
            log.info("stopped; %d vectors written back to %s", written, service.cache.store.dir)

    routes = [route("/score")(score), route("/rank")(rank), route("/get_reward")(get_reward),
              route("/health", "GET", auth=False)(health), route("/ready", "GET", auth=False)(ready),
              route("/metrics", "GET")(metrics), route("/", "GET")(info)]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={StarletteHTTPException: not_found})


def load_token(token_file: str | None) -> str | None:
    """The bearer token: the first line of ``token_file``, else ``ORM_CACHE_TOKEN``, else None."""
    import os

    from ..errors import ConfigError

    if token_file:
        try:
            token = open(token_file, encoding="utf-8").readline().strip()
        except OSError as e:
            raise ConfigError(f"--token-file {token_file}: {e.strerror or e}") from None
        if not token:
            raise ConfigError(f"--token-file {token_file}: its first line is empty")
        return token
    return os.environ.get("ORM_CACHE_TOKEN") or None


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(service: Service, host: str = "127.0.0.1", port: int = 8000, access_log: bool = False,
        announce=print, max_connections: int = 1024) -> None:
    """Serve until SIGTERM or SIGINT: stop accepting, answer what is in flight, write back, return;
    a StoreError when vectors it answered could not be written back."""
    import signal
    import socket

    import uvicorn

    from ..errors import ConfigError

    import sys

    # the batcher's thread takes the GIL a few times per batch; beside a busy event loop each
    # take waits up to the switch interval (5 ms by default)
    sys.setswitchinterval(0.0005)
    if service.token is None and not is_loopback(host):
        raise ConfigError(f"--host {host} is reachable from other machines: give a token (--token-file F or "
                          "ORM_CACHE_TOKEN) so only your callers can use it")
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        # proto IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say so (else each
        # response waits ~40 ms for the client's delayed ACK)
        sock = socket.socket(info[0], socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(info[4])
        sock.listen(2048)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    bound = sock.getsockname()
    config = uvicorn.Config(create_app(service), log_level="warning", access_log=access_log, lifespan="on",
                            timeout_graceful_shutdown=60, limit_concurrency=max_connections)
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal that stopped it once it is done; with these handlers that is a
    # no-op, so a SIGTERM'd server that shut down cleanly exits 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    url = f"http://{bound[0] if ':' not in bound[0] else '[' + bound[0] + ']'}:{bound[1]}"
    c = service.cache
    service.announce = lambda: announce(
        f"orm-cache serve: listening on {url} (head {c.head.source}, {c.head.feature}; store {c.store.dir}, "
        f"{len(c.store):,} vectors; token {'required' if service.token else 'not required (loopback only)'}; "
        f"model {'loaded' if service.model_loaded else 'loaded on the first miss'}; SIGTERM or Ctrl-C stops it)")
    server.run(sockets=[sock])
    if service.write_error:
        raise StoreError(f"write-back failed ({service.write_error}); the vectors not written are embedded again "
                         "when next asked for")
