"""The command line: each command parses options, builds a config and calls one library function
(:mod:`orm_cache.pipeline`); no logic lives here beyond translating options and printing what the
library returns. ``orm-cache`` and ``python -m orm_cache`` run :func:`main`."""

from __future__ import annotations

import signal

from . import apply, serve, stage1, stage2  # noqa: F401 (each registers its commands on the group)
from .base import cli
from .options import _on_sigterm


def main():
    signal.signal(signal.SIGTERM, _on_sigterm)
    cli.main(prog_name="orm-cache")


__all__ = ["cli", "main"]
