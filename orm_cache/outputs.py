"""Every file a user keeps is replaced only by a complete new one (DESIGN.md invariant 8).

One mechanism for all of them (scores, rankings, rejected-row side files, JSON reports, sweep
tables, checkpoints, plots): the content is written to a temporary file *beside* the target
(same directory, so the final rename is atomic), flushed and fsynced, and renamed onto the
target only after its last byte. Whatever stops the work before that — a bad row, Ctrl-C,
SIGTERM, a full disk, another run writing the same path — leaves the previous file (or its
absence) exactly as it was, and the temporary file is removed.

Temporary names are unique per process and call, so two runs writing one path never write into
each other's file: each produces a complete output, and the last rename wins.
"""

from __future__ import annotations

import errno
import json
import math
import os
import secrets
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from .errors import OutputError  # noqa: F401 (re-exported: its old import location)

TMP_MARK = ".orm-tmp-"
# Errors of writing a file (space, quota, size, read-only or failing disk, permissions).
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM}


def check_output_path(path: str | os.PathLike) -> Path:
    """``path`` as a Path, after making sure a file can be created there (its parent directory
    exists or can be made; neither it nor a parent is in the way); else one-line OutputError."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; give a file path")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{path}: cannot create it, {parent} is a file, not a directory")
            break
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{path}: cannot create its directory ({e.strerror or e})") from None
    return path


def through_links(path: str | os.PathLike) -> Path:
    """``path``, or the file or directory it links to when it is a symbolic link: an output
    written through a link replaces the link's target and keeps the link a link."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def temp_path_for(path: Path) -> Path:
    """A hidden temporary name beside ``path``, unique to this process and call."""
    return path.with_name(f"{TMP_MARK}{os.getpid()}.{secrets.token_hex(4)}.{path.name}")  # keeps the extension


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for the caller to write; on a clean exit fsync it
    and rename it onto ``path``; on any exception (KeyboardInterrupt and SIGTERM included)
    delete it and leave ``path`` untouched. An OSError (full disk, permissions) becomes one line."""
    path = check_output_path(through_links(path))
    tmp = temp_path_for(path)
    try:
        yield tmp
        if not tmp.exists():  # the writer wrote nothing: an empty file is the output
            tmp.touch()
        _fsync(tmp)
        os.replace(tmp, path)
    except OSError as e:
        if e.errno not in WRITE_ERRNOS and e.filename not in (str(tmp), str(path)):
            raise  # not this output's fault (e.g. reading the input): let it speak for itself
        raise OutputError(f"{path}: could not write ({e.strerror or e}); "
                          "the previous file, if any, is untouched") from None
    finally:
        _remove(tmp)


def _remove(tmp: Path) -> None:
    """Remove a temporary file; a directory that refuses (read-only, gone) must not hide the
    error that stopped the write."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass


def check_not_input(output, **inputs) -> None:
    """Refuse an output that is one of the command's inputs (``label=path``): writing it would
    destroy what the command reads, e.g. ``eval --json`` onto the head it evaluates."""
    out = Path(output)
    for label, p in inputs.items():
        if p is None:
            continue
        p = Path(p)
        same = out.exists() and p.exists() and os.path.samefile(out, p)
        if same or out.resolve() == p.resolve():
            raise OutputError(f"{output}: is the {label.replace('_', ' ')} this command reads; "
                              "write the output somewhere else")


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kw):
    """``open()`` of a temporary file that becomes ``path`` only when the block completes."""
    with atomic_path(path) as tmp, open(tmp, mode, **kw) as f:
        yield f


@contextmanager
def atomic_dir(path: str | os.PathLike, replaceable=lambda d: (d / "config.json").is_file()) -> Iterator[Path]:
    """Yield a temporary directory beside ``path`` for the caller to fill; on a clean exit rename
    it onto ``path`` (an existing ``path`` is moved aside first and deleted after, so it is
    replaced only by a complete new one); on any exception delete it and leave ``path`` as it
    was. An existing non-empty ``path`` for which ``replaceable(path)`` is false is refused
    before anything is written (it is not a previous output)."""
    import shutil

    path = through_links(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: is a file; give a directory")
    path = check_output_path(path) if not path.is_dir() else path
    if path.is_dir() and any(path.iterdir()) and not replaceable(path):
        raise OutputError(f"{path}: exists and holds something else; give an empty or new directory")
    tmp = temp_path_for(path)
    old = None
    try:
        tmp.mkdir()
        yield tmp
        if path.is_dir():
            old = temp_path_for(path)
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None:
                os.replace(old, path)  # put the previous output back
                old = None
            raise
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        raise OutputError(f"{path}: could not write ({e.strerror or e}); "
                          "the previous directory, if any, is untouched") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


class AtomicOutputs(ExitStack):
    """Several outputs of one command, committed together when the ``with`` block completes
    (e.g. scores and their rejected-rows side file): ``path(target)`` gives a temporary path
    for each; an exception anywhere in the block removes all of them."""

    def path(self, target) -> Path:
        return self.enter_context(atomic_path(target))


# ------------------------------------------------------------------------------------ JSON

def json_safe(obj, where: str = "", reasons: dict | None = None):
    """``obj`` with every NaN or ±Infinity float replaced by None (strict JSON has neither);
    each replacement's path and original value go into ``reasons``."""
    if isinstance(obj, float) and not math.isfinite(obj):
        if reasons is not None:
            reasons[where or "."] = f"{obj!r} is not a JSON number"
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v, f"{where}.{k}" if where else str(k), reasons) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v, f"{where}[{i}]", reasons) for i, v in enumerate(obj)]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "shape", None) == ():  # NumPy scalar
        return json_safe(obj.item(), where, reasons)
    return obj


def write_json(path, obj, reason_key: str = "null_reasons") -> Path:
    """Strict JSON (no NaN/Infinity: they become null, explained under ``reason_key`` when
    ``obj`` is a mapping), written atomically."""
    reasons: dict = {}
    clean = json_safe(obj, reasons=reasons)
    if reasons and isinstance(clean, dict):
        clean[reason_key] = reasons
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(clean, f, indent=2, allow_nan=False, default=str)
        f.write("\n")
    return Path(path)
