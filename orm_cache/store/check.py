"""``orm-cache cache check``: verify every shard of every store and report per shard."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .shards import SHARD_SUFFIX, TMP_PREFIX, list_stores, open_shard


@dataclass
class ShardStatus:
    path: Path
    ok: bool
    rows: int
    problem: str | None


def check_store(store: dict, stale_minutes: float = 60.0) -> tuple[list[ShardStatus], list[Path]]:
    """Status of every shard of one store, and temporary files older than ``stale_minutes``
    (left by a killed writer; young ones may belong to a writer still running)."""
    d = Path(store["dir"])
    statuses = []
    for path in sorted(d.glob(f"*{SHARD_SUFFIX}")):
        if path.name.startswith(TMP_PREFIX):
            continue
        table, problem = open_shard(path, store["fingerprint"] or "")
        statuses.append(ShardStatus(path, problem is None, table.num_rows if table is not None else 0, problem))
    now = time.time()
    stale = [p for p in d.glob(f"{TMP_PREFIX}*") if now - p.stat().st_mtime > stale_minutes * 60]
    return statuses, stale


def check_cache(cache_dir, fix: bool = False, stale_minutes: float = 60.0) -> tuple[list[str], int]:
    """Report lines and the number of problems left; ``fix`` moves bad shards to
    ``<store>/corrupt/`` (their rows are re-embedded by the next run) and deletes stale temp files."""
    lines, problems = [], 0
    stores = list_stores(cache_dir)
    if not stores:
        return [f"no vector stores under {cache_dir}"], 0
    for s in stores:
        statuses, stale = check_store(s, stale_minutes)
        good = [x for x in statuses if x.ok]
        lines.append(f"{s['dir']}: {len(good)}/{len(statuses)} shards ok, {sum(x.rows for x in good):,} rows")
        for x in statuses:
            if x.ok:
                continue
            if fix:
                dest = Path(s["dir"]) / "corrupt" / x.path.name
                dest.parent.mkdir(exist_ok=True)
                x.path.rename(dest)
                lines.append(f"  moved {x.path.name} to corrupt/: {x.problem}")
            else:
                problems += 1
                lines.append(f"  BAD {x.path}: {x.problem}")
        for p in stale:
            if fix:
                p.unlink(missing_ok=True)
                lines.append(f"  removed stale temporary file {p.name}")
            else:
                problems += 1
                lines.append(f"  STALE {p} (a killed writer's partial shard; never read)")
    return lines, problems
