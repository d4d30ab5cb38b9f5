"""``orm-cache cache check``: verify every shard of every store and report per shard;
``cache compact``: merge small shards, safely beside readers.

A store's fingerprint comes from :func:`describe_store`: from ``encoder.json`` or, when that file
is missing or broken, from the shards themselves, so a lost ``encoder.json`` never makes good
shards look foreign. ``--fix`` rewrites it from the shards; a store whose encoder nothing can tell
is reported and left untouched."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .blocks import verify_table
from .describe import list_stores, write_encoder_json
from .fingerprint import short
from .shards import TMP_PREFIX, StoreError, _stat_key, list_shards, open_shard, remember_verified


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
    statuses, verified = [], {}
    for path in list_shards(d):
        stat = _stat_key(path)
        try:
            table, problem = open_shard(path, store["fingerprint"])
        except FileNotFoundError:  # merged away by a compaction meanwhile
            continue
        if problem is None:
            problem = verify_table(table, path) or non_finite(table)
        statuses.append(ShardStatus(path, problem is None, table.num_rows if table is not None else 0, problem))
        verified[path.name] = stat if problem is None else None  # a bad shard is not trusted by later opens
    remember_verified(d, verified)
    now = time.time()
    stale = [p for p in d.glob(f"{TMP_PREFIX}*") if now - p.stat().st_mtime > stale_minutes * 60]
    return statuses, stale


def non_finite(table) -> str | None:
    """What is wrong when a shard's vectors hold NaN or Inf (a writer never stores them, so
    such a shard was corrupted in a way its checksum did not catch), else None."""
    import numpy as np

    for name in table.schema.names:
        if "@" not in name:
            continue
        bad = sum(int((~np.isfinite(chunk.flatten().to_numpy(zero_copy_only=False))).sum())
                  for chunk in table.column(name).chunks)
        if bad:
            return f"{bad:,} non-finite values (NaN or Inf) in {name}: corrupted; its rows are re-embedded after --fix"
    return None


def check_cache(cache_dir, fix: bool = False, stale_minutes: float = 60.0) -> tuple[list[str], int]:
    """Report lines and the number of problems left; ``fix`` moves bad shards to
    ``<store>/corrupt/`` (their rows are re-embedded by the next run) and deletes stale temp files."""
    lines, problems = [], 0
    stores = list_stores(cache_dir)
    if not stores:
        return [f"no vector stores under {cache_dir}"], 0
    for s in stores:
        if s["fingerprint"] is None:
            problems += 1
            lines.append(f"{s['dir']}: {s['problem']}; cannot tell which encoder it holds, "
                         "so no shard of it was checked or moved")
            continue
        statuses, stale = check_store(s, stale_minutes)
        good = [x for x in statuses if x.ok]
        lines.append(f"{s['dir']}: {len(good)}/{len(statuses)} shards ok, {sum(x.rows for x in good):,} rows")
        if s["problem"] and fix:
            write_encoder_json(Path(s["dir"]), s["fingerprint"], s["identity"], s["spec"])
            lines.append(f"  rewrote encoder.json from the shards (fingerprint {short(s['fingerprint'])}): "
                         f"{s['problem']}")
        elif s["problem"]:
            problems += 1
            lines.append(f"  BAD {s['problem']}; the shards say fingerprint {short(s['fingerprint'])} "
                         "(--fix rewrites it from them)")
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


def compact_store(store: dict, target_rows: int = 65_536, report: list | None = None) -> tuple[int, int]:
    """Merge the verified shards smaller than ``target_rows`` into as few shards as possible.

    Every shard, merged or kept, is verified in full first (its file checksum, its block
    checksums, finite values), never trusted from ``verified.json``: one that fails is moved to
    ``<store>/corrupt/`` (its rows are embedded again by the next run) and reported in ``report``
    (one line each), so a damaged shard is neither merged under a new checksum nor left in use.

    Each merged shard is written completely (temporary name, checksum, rename) before the shards
    it replaces are deleted, so a crash in between leaves duplicate keys, which collapse on read,
    and loses nothing; a reader that listed a shard deleted before it opened it lists the
    directory again and finds the merged shard (:meth:`VectorStore.refresh`). Duplicate keys are
    dropped from the merged shard (the first kept, as on read). Returns ``(shards before, shards
    after)``.
    """
    import os
    import socket

    import numpy as np
    import pyarrow as pa

    from .shards import VectorStore, write_shard

    if store["fingerprint"] is None:
        raise StoreError(f"{store['problem']}; cannot tell which encoder {store['dir']} holds, so it is not "
                         "compacted (see orm-cache cache check)")
    import warnings

    directory = Path(store["dir"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a shard that fails to open is reported below
        vs = VectorStore(directory, store["fingerprint"])
    mine = [(p, t) for p, t in zip(vs._paths, vs._tables) if p.parent == directory]  # not those it reads across
    before = len(mine) + sum(p.parent == directory for p, _ in vs.skipped)
    # Every shard is checked in full first (checksums and values), not trusted from verified.json:
    # a merged shard gets a new checksum, which would hide any corruption for good, and a kept one
    # would stay in use. One that fails is quarantined and reported.
    failed = [(p, why) for p, why in vs.skipped if p.parent == directory and p.exists()]
    sound = []
    for p, t in mine:
        problem = _problem(p, store)
        if problem == "gone":
            continue
        (failed.append((p, problem)) if problem else sound.append((p, t)))
    for p, why in failed:
        _quarantine(p, why, report)
    small = [(p, t) for p, t in sound if t.num_rows < target_rows]
    # Shards merge with shards of the same columns only (one store holds shards of several column
    # sets when poolings or layers were embedded at different times); a key's first row per set wins.
    by_columns: dict[tuple, list] = {}
    for p, t in small:
        by_columns.setdefault(tuple(t.schema.names), []).append((p, t))  # one schema: concatenable
    stem = f"{time.time_ns():016x}-{socket.gethostname()}-{os.getpid()}-compact"
    n = 0
    for cols, shards in by_columns.items():
        if len(shards) < 2:
            continue
        groups, current, rows = [], [], 0
        for p, t in shards:
            if current and rows + t.num_rows > target_rows:
                groups.append(current)
                current, rows = [], 0
            current.append((p, t))
            rows += t.num_rows
        groups.append(current)
        seen: set[str] = set(k for p, t in sound if t.num_rows >= target_rows and tuple(t.schema.names) == cols
                             for k in t.column("key").to_pylist())
        for group in groups:
            if len(group) < 2:
                continue
            table = pa.concat_tables([t for _, t in group])
            keys = table.column("key").to_pylist()
            keep = np.zeros(len(keys), dtype=bool)  # first occurrence of each key, as on read
            for j, k in enumerate(keys):
                if k not in seen:
                    seen.add(k)
                    keep[j] = True
            write_shard(directory, table.filter(pa.array(keep)) if not keep.all() else table, f"{stem}{n:03d}")
            n += 1
            del table
            for p, _ in group:
                p.unlink(missing_ok=True)
    return before, len(list_shards(directory))


def _problem(path: Path, store: dict) -> str | None:
    """What fails of every check ``cache check`` makes, read from the disk now (None: sound;
    "gone": compacted away meanwhile)."""
    try:
        table, problem = open_shard(path, store["fingerprint"])
    except FileNotFoundError:
        return "gone"
    return problem or verify_table(table, path) or non_finite(table)


def _quarantine(path: Path, why: str, report: list | None) -> None:
    """Move a shard that failed to ``<store>/corrupt/`` and say so (a warning, and a line in ``report``)."""
    import warnings

    dest = path.parent / "corrupt" / path.name
    try:
        dest.parent.mkdir(exist_ok=True)
        path.rename(dest)
        line = f"moved {path.name} to corrupt/: {why}; its rows are embedded again by the next run"
    except FileNotFoundError:
        return
    except OSError as e:
        line = f"BAD {path}: {why}; could not move it to corrupt/ ({e.strerror or e})"
    if report is not None:
        report.append(line)
    else:
        warnings.warn(line, stacklevel=3)
