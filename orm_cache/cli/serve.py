"""``orm-cache serve``: a head's rewards over HTTP for RL trainers and search loops."""

from __future__ import annotations

import click

from ..config import RunSpec
from .base import cli
from .options import _opt, cache_option, quiet_option, setup_logging, store_option


@cli.command(short_help="Serve a head's rewards over HTTP: cache first, misses batched.")
@click.option("--head", "head_path", required=True, type=click.Path(dir_okay=False, exists=True),
              help="Checkpoint (.pt).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; any other than loopback needs a token.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port (0: any free one; the line 'listening on' names it).")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="File whose first line is the bearer token callers must send [default: $ORM_CACHE_TOKEN].")
@click.option("--preload", is_flag=True, help="Load the encoder at start, not on the first cache miss.")
@click.option("--no-write-back", is_flag=True, help="Do not add the vectors of misses to the store.")
@click.option("--max-texts", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Texts per request.")
@click.option("--max-text-chars", type=click.IntRange(min=1), default=200_000, show_default=True,
              help="Characters per text (as the head's recipe builds it).")
@click.option("--max-body-mb", type=click.FloatRange(min=0.001), default=16.0, show_default=True,
              help="Request body size.")
@click.option("--max-queue", type=click.IntRange(min=1), default=8192, show_default=True,
              help="Miss texts waiting for the encoder; beyond it requests get 503 with Retry-After.")
@click.option("--max-connections", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Open connections at once; beyond it new ones get 503 (put a proxy in front of a public address).")
@click.option("--body-timeout", type=click.FloatRange(min=0.01), default=30.0, show_default=True,
              help="Seconds a request's body may take to arrive (then 408).")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="How long the encoder waits for other requests' misses to fill a batch.")
@click.option("--max-batch-texts", type=click.IntRange(min=1), default=256, show_default=True,
              help="Texts per encoder call, split further by the token budget (1: each text alone).")
@click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True,
              help="Device for embedding cache misses.")
@_opt(RunSpec, "batch_tokens", type=int, default=None, show_default=False)
@store_option
@click.option("--feature", default=None, help="Vector column [default: the head's].")
@cache_option
@click.option("--answer-pattern", default=None, metavar="REGEX",
              help="Finds /rank candidates' final answers (last match; group 'answer' or the first) when a "
                   "request sends no \"answers\", for \"aggregate\": \"vote\" or \"weighted-vote\".")
@click.option("--access-log", is_flag=True, help="Log every request (off: it costs time at high rates).")
@quiet_option
def serve(head_path, host, port, token_file, preload, no_write_back, max_texts, max_text_chars, max_body_mb,
          max_queue, max_connections, body_timeout, max_wait_ms, max_batch_texts, device, batch_tokens, store, feature, cache_dir, answer_pattern, access_log, quiet):
    """Serve a head's rewards over HTTP (Starlette on uvicorn) for RL trainers and search loops.

    Texts are built by the head's recipe, exactly as `orm-cache score` builds them, and scored
    from the store when it holds their vectors (no model); misses of all concurrent requests are
    embedded together in length-sorted batches and written back to the store. Endpoints:
    POST /score, /rank, /get_reward (OpenRLHF's protocol); GET /health, /ready, /metrics
    (Prometheus). docs/serve.md has the request shapes, the Python reward function for TRL and
    how replicas share one store. SIGTERM stops accepting, answers what is in flight, writes
    back and exits 0.
    """
    from ..pipeline.serve import Limits, Service, load_token, run

    setup_logging(quiet)
    token = load_token(token_file)
    if answer_pattern is not None:
        from ..evaluate.vote import AnswerSource

        AnswerSource(pattern=answer_pattern)  # a bad regex is refused at start
    cache_args = dict(head=head_path, cache_dir=cache_dir, device=device, batch_tokens=batch_tokens,
                      write_back=not no_write_back, store=store, feature=feature)
    limits = Limits(int(max_body_mb * (1 << 20)), max_texts, max_text_chars, max_queue, max_wait_ms, max_batch_texts,
                    body_timeout)
    run(Service(cache_args, limits, token, preload, answer_pattern), host, port, access_log, announce=lambda s: click.echo(s, err=True),
        max_connections=max_connections)
