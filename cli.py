#!/usr/bin/env python
"""``python cli.py ...`` is the same as ``orm-cache ...``."""

from orm_cache.cli import main

if __name__ == "__main__":
    main()
