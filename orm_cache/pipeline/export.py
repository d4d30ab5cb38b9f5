"""Hugging Face reward models in and out: ``export`` and ``import-head``.

``export_head`` writes a directory that ``AutoModelForSequenceClassification.from_pretrained``
loads with no orm-cache installed (transformers, TRL, OpenRLHF, reward-bench): the frozen
encoder's weights and tokenizer, and the head as the ``score`` layer (``num_labels=1``, pad token
set). Its logit for a text is orm-cache's score minus the head's bias: these classes' score layer
has no bias, so the bias is recorded in ``config.json`` (``orm_cache.score_bias``) instead.

That equality holds only where the sequence-classification class takes the hidden state that
orm-cache's ``last@-1`` takes: the final layer at the final non-padding token, for right and left
padding alike. The architectures below do (tiny models of each checked in the tests, fp32, both
padding sides): their class pools the rightmost token that is not ``pad_token_id``, and a
left-padded text gets the same hidden states because positions come from the attention mask
(OPT) or are rotary, i.e. relative (the others). Everything else is refused with the reason.

``import_head`` goes the other way: the ``score`` layer of an existing sequence-classification
reward model becomes an orm-cache head over that model's backbone (``last@-1`` of the same
directory), so the reward model can be evaluated and used for re-scoring from the cache.

Both import transformers, and only here: stage 2 never does.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..encode.spec import EncoderSpec
from ..errors import ExportError  # noqa: F401 (re-exported: its old import location)
from ..text import TextRecipe
from ..head.checkpoint import Head
from ..head.kinds import LinearHead

log = logging.getLogger(__name__)

# model_type -> why its sequence-classification class scores what last@-1 holds, on both padding sides
EXPORT_ARCHITECTURES = {
    "opt": "pools the rightmost non-pad token; positions come from the attention mask",
    "llama": "pools the rightmost non-pad token; rotary (relative) positions",
    "mistral": "pools the rightmost non-pad token; rotary (relative) positions",
    "qwen2": "pools the rightmost non-pad token; rotary (relative) positions",
    "gemma": "pools the rightmost non-pad token; rotary (relative) positions",
    "phi3": "pools the rightmost non-pad token; rotary (relative) positions",
    "gpt_neox": "pools the rightmost non-pad token; rotary (relative) positions",
}
ENCODER_STYLE = ("bert", "roberta", "xlm-roberta", "distilbert", "deberta", "deberta-v2", "electra", "albert",
                 "mpnet", "camembert", "modernbert")
ABSOLUTE_POSITIONS = ("gpt2", "gptj", "gpt_neo", "bloom", "falcon", "codegen", "biogpt")
EXPORT_PAD_TOKEN = "<|orm_cache_pad|>"


def check_architecture(model_type: str, what: str = "export") -> None:
    """Refuse an architecture whose sequence-classification class does not score last@-1."""
    if model_type in EXPORT_ARCHITECTURES:
        return
    supported = ", ".join(EXPORT_ARCHITECTURES)
    if model_type in ENCODER_STYLE:
        why = ("it is a BERT-style encoder: its sequence-classification model scores the first ([CLS]) token "
               "through a pooler and classifier, not the final token")
    elif model_type in ABSOLUTE_POSITIONS:
        why = ("its positions count from the first token, pad or not, so a left-padded text would get another "
               "hidden state than orm-cache pooled")
    else:
        why = "its sequence-classification class has not been checked to score the final non-padding token"
    raise ExportError(f"cannot {what} a {model_type!r} model: {why}; supported: {supported}")


def check_exportable(head: Head) -> None:
    """Refuse a head that a single bias-free linear ``score`` layer cannot hold."""
    kind = getattr(head, "kind", None) or head.meta.get("kind", "linear")
    if kind != "linear":
        raise ExportError(f"cannot export a {kind!r} head: a sequence-classification model's score layer is one "
                          "linear map (train a linear head to export)")
    feature = head.feature or "last@-1"
    if head.meta.get("encoders") or ":" in feature:
        raise ExportError(f"cannot export a head over several encoders ({feature}): a sequence-classification model "
                          "is one encoder with one score layer; score it with orm-cache (score, rank, LiveScorer)")
    if "logprob" in feature.split("+"):
        raise ExportError(f"cannot export a head trained on {feature}: logprob is the LM's likelihood of the "
                          "response, which a sequence-classification model's score layer does not compute")
    if "+" in feature:
        raise ExportError(f"cannot export a head trained on {feature}: a sequence-classification model's score "
                          "layer reads one hidden state (last@-1), not several concatenated")
    pooling, _, layer = feature.partition("@")
    if pooling != "last":
        raise ExportError(f"cannot export a head trained on {feature}: {pooling} pooling is not what a "
                          "sequence-classification model scores (the final non-padding token, last@-1)")
    if layer != "-1":
        raise ExportError(f"cannot export a head trained on {feature}: a sequence-classification model's score "
                          "layer reads the final layer (last@-1), not layer " + layer)
    if not head.meta.get("encoder_spec"):
        raise ExportError("cannot export a reference-format head: it records no encoder (train or import a head "
                          "with orm-cache so the checkpoint names its model)")


@contextlib.contextmanager
def _quiet_transformers():
    """No load reports or progress bars from transformers while exporting or importing."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()


@dataclass
class ExportResult:
    path: Path
    model_type: str
    bias: float
    pad_token_id: int
    added_pad_token: bool
    dtype: str
    max_length: int


def export_head(head_path, out) -> ExportResult:
    """Write ``out``: a Hugging Face sequence-classification reward model whose logit for a text
    is the head's score minus its bias. ``out`` appears only complete (written to a temporary
    directory beside it and renamed); a previous export there is replaced."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from .live import encoder_for_head
    from ..outputs import atomic_dir

    head = Head.load(head_path)
    check_exportable(head)
    model_type = ((head.meta.get("encoder_identity") or {}).get("model") or {}).get("model_type")
    if model_type:
        check_architecture(model_type)
    encoder = encoder_for_head(head, "cpu")  # same files as the head's vectors, or refused
    model_type = encoder.config.model_type
    check_architecture(model_type)
    spec, tok = encoder.spec, encoder.tokenizer
    added_pad = False
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        # The class finds a text's end by the first pad id from the right: a pad equal to the eos a
        # text may end with would move the pooled token. A token no text produces does not.
        tok.add_special_tokens({"pad_token": EXPORT_PAD_TOKEN})
        added_pad = True
    recipe = TextRecipe.from_dict(head.recipe or {})
    with _quiet_transformers():
        cfg = AutoConfig.from_pretrained(encoder.path, revision=spec.revision)
        cfg.num_labels, cfg.id2label, cfg.label2id = 1, {0: "score"}, {"score": 0}
        model = AutoModelForSequenceClassification.from_pretrained(encoder.path, config=cfg, revision=spec.revision,
                                                                   dtype=encoder.torch_dtype)
        if added_pad and tok.pad_token_id >= model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tok), mean_resizing=False)  # the pad row is never attended to
    model.config.pad_token_id = tok.pad_token_id  # what the class looks for to find each text's end
    score = getattr(model, "score", None)
    if not isinstance(score, torch.nn.Linear) or score.out_features != 1 or score.in_features != head.dim:
        raise ExportError(f"{type(model).__name__} has no score layer of shape [1, {head.dim}] to hold the head "
                          f"(found {score!r:.80})")
    bias_in_model = score.bias is not None
    with torch.no_grad():
        score.weight.copy_(torch.from_numpy(head.weight.astype(np.float32)).reshape(1, -1))
        if bias_in_model:
            score.bias.fill_(head.bias)
    dropped = 0.0 if bias_in_model else float(head.bias)
    model.config.orm_cache = {
        "score_bias": dropped,
        "note": ("logits = orm-cache score - score_bias: this class's score layer has no bias, so the head's "
                 "bias is recorded here instead" if not bias_in_model else "logits = orm-cache score"),
        "head": str(Path(head_path).resolve()), "fingerprint": head.fingerprint, "feature": "last@-1",
        "max_length": spec.max_length, "truncation_side": spec.truncation_side,
        "recipe": recipe.to_dict(), "temperature": head.temperature, "score_std": head.score_std,
    }
    tok.model_max_length = spec.max_length  # tok(texts, truncation=True) keeps what orm-cache kept
    tok.truncation_side = spec.truncation_side
    if recipe.chat_template:
        tok.chat_template = recipe.chat_template
    with atomic_dir(out, replaceable=is_export) as tmp, _quiet_transformers():
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        _record_in_tokenizer_config(tmp, truncation_side=spec.truncation_side, model_max_length=spec.max_length)
        (tmp / "README.md").write_text(_card(model_type, type(model).__name__, dropped, spec, recipe), encoding="utf-8")
    return ExportResult(Path(out), model_type, dropped, int(tok.pad_token_id), added_pad,
                        str(encoder.torch_dtype).removeprefix("torch."), spec.max_length)


def _card(model_type: str, cls: str, bias: float, spec: EncoderSpec, recipe: TextRecipe) -> str:
    chat = ("Texts are conversations: tokenize them with `tokenizer.apply_chat_template(messages, tokenize=True)` "
            "(or render with `tokenize=False` and call `tokenizer(text, add_special_tokens=False)`: the template "
            "writes its own special tokens). A prompt and a response given as strings are the user and "
            "assistant turns.\n" if recipe.kind == "chat" else "")
    joined = (f"Texts with a prompt were built as `{recipe.template!r}.format(prompt=..., response=...)` and "
              "tokenized with `tokenizer(text)`.\n" if recipe.kind != "chat" and recipe.prompt_col else "")
    if recipe.kind != "chat" and recipe.eos:
        joined += (f"The tokenizer's EOS token ({recipe.eos_token!r}) was appended to every text that did not end "
                   "with it, as TRL's RewardTrainer does.\n")
    return (f"# Reward model exported by orm-cache\n\n"
            f"A frozen `{model_type}` encoder with a linear reward head as the `score` layer of `{cls}` "
            f"(`num_labels=1`). Load it with `AutoModelForSequenceClassification.from_pretrained(this_dir)`; the "
            f"logit of a text is its reward.\n\n"
            f"The logits equal orm-cache's scores minus the head's bias, {bias!r}: this class's score layer has no "
            f"bias (`config.orm_cache.score_bias`). Rankings and pairwise preferences are unaffected.\n\n"
            f"Tokenize with `truncation=True` (max length {spec.max_length}, truncating on the "
            f"{spec.truncation_side}), right or left padding, and pass the attention mask. A text whose final token "
            f"is the pad token is scored at the token before it.\n\n{joined}{chat}")


# ----------------------------------------------------------------------------------- import

@dataclass
class ImportResult:
    head: Head
    path: Path


def _score_layer(directory: Path) -> tuple[np.ndarray, float | None, str]:
    """``score.weight`` ``(1, D)`` and ``score.bias`` (None when absent) of a saved model, read
    from its weight files without loading the model."""

    index = directory / "model.safetensors.index.json"
    files = []
    if index.is_file():
        wmap = json.loads(index.read_text()).get("weight_map", {})
        files = sorted({directory / wmap[k] for k in ("score.weight", "score.bias") if k in wmap})
    elif (directory / "model.safetensors").is_file():
        files = [directory / "model.safetensors"]
    elif (directory / "pytorch_model.bin").is_file():
        files = [directory / "pytorch_model.bin"]
    tensors = {}
    for f in files:
        if f.suffix == ".safetensors":
            from safetensors import safe_open

            try:
                with safe_open(str(f), framework="pt") as sf:
                    tensors.update({k: sf.get_tensor(k) for k in ("score.weight", "score.bias") if k in sf.keys()})
            except OSError:
                raise
            except Exception as e:  # safetensors' own error for a truncated or malformed file
                raise ExportError(f"{f}: not a complete safetensors file ({' '.join(str(e).split())[:200]}); "
                                  "save the reward model again (save_pretrained)") from None
        else:
            tensors.update(_bin_score_layer(f))
    if "score.weight" not in tensors:
        raise ExportError(f"{directory}: no score.weight in its weights; import-head takes the score layer of a "
                          "sequence-classification reward model")
    import torch

    w = tensors["score.weight"]
    if not w.is_floating_point():
        raise ExportError(f"{directory}: score.weight is {w.dtype}, not a floating-point tensor")
    w = w.float()
    if w.ndim != 2 or w.shape[0] != 1:
        raise ExportError(f"{directory}: score.weight has shape {list(w.shape)}; a reward model has one output "
                          "(num_labels=1)")
    b = tensors.get("score.bias")
    if b is not None and (not b.is_floating_point() or b.numel() != 1):
        raise ExportError(f"{directory}: score.bias has shape {list(b.shape)} ({b.dtype}); a reward model's is one number")
    if not torch.isfinite(w).all() or (b is not None and not torch.isfinite(b.float()).all()):
        raise ExportError(f"{directory}: its score layer holds NaN or Inf; it would write NaN scores")
    return w.reshape(-1).numpy(), None if b is None else float(b.float().reshape(-1)[0]), str(files[0].name)


def _bin_score_layer(f: Path) -> dict:
    """``score.*`` of a ``pytorch_model.bin``. Only torch's zip format is read, and only with
    ``weights_only`` (no code in the file runs); a legacy pickle, a truncated archive or anything
    else is refused in one line before torch sees it."""
    import pickle
    import zipfile

    import torch

    fix = "save the reward model with save_pretrained(safe_serialization=True) and import that"
    if not zipfile.is_zipfile(f):  # its central directory is at the end: a cut file has none
        raise ExportError(f"{f}: not a complete torch zip checkpoint (truncated, or a legacy pickle, which "
                          f"import-head never unpickles); {fix}")
    try:
        with zipfile.ZipFile(f) as z:
            names = z.namelist()
            if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
                raise ExportError(f"{f}: a zip archive, but not a torch checkpoint (no data.pkl); {fix}")
            if any(z.getinfo(n).header_offset + z.getinfo(n).compress_size > f.stat().st_size for n in names):
                raise ExportError(f"{f}: truncated (a member ends past the end of the file); {fix}")
        state = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
    except ExportError:
        raise
    except (pickle.UnpicklingError, RuntimeError, zipfile.BadZipFile, EOFError, ValueError, KeyError,
            AttributeError, TypeError) as e:
        raise ExportError(f"{f}: refused ({' '.join(str(e).split())[:160]}); {fix}") from None
    if not isinstance(state, dict):
        raise ExportError(f"{f}: holds a {type(state).__name__}, not a state dict of tensors; {fix}")
    return {k: state[k] for k in ("score.weight", "score.bias") if k in state and isinstance(state[k], torch.Tensor)}


def _tokenizer_limits(directory: Path, cfg: dict, max_length: int | None, truncation_side: str | None):
    """The reward model's own truncation, where not given: its tokenizer's model_max_length (when
    a real number) capped by its positions, else 512; its tokenizer's truncation side, else right."""
    try:
        tcfg = json.loads((directory / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        tcfg = {}
    if max_length is None:
        limits = [n for n in (tcfg.get("model_max_length"), cfg.get("max_position_embeddings"))
                  if isinstance(n, int) and 1 < n < 1_000_000]
        max_length = min(limits) if limits else 512
    if truncation_side is None:
        truncation_side = tcfg.get("truncation_side") if tcfg.get("truncation_side") in ("left", "right") else "right"
    return max_length, truncation_side


def is_export(directory: Path) -> bool:
    """Is ``directory`` a previous ``orm-cache export`` (its config.json records orm_cache's head),
    and nothing else beside it? Only such a directory is replaced; a model folder, the head's own
    encoder or a folder holding other files is refused."""
    try:
        cfg = json.loads((Path(directory) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    known = {"config.json", "README.md", "model.safetensors", "model.safetensors.index.json", "generation_config.json",
             "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
             "chat_template.jinja", "added_tokens.json", "tokenizer.model"}
    others = [p.name for p in Path(directory).iterdir() if p.name not in known
              and not (p.name.startswith("model-") and p.name.endswith(".safetensors"))]
    return isinstance(cfg, dict) and isinstance(cfg.get("orm_cache"), dict) and not others


def _record_in_tokenizer_config(directory: Path, **fields) -> None:
    """Write ``fields`` into the saved tokenizer_config.json (save_pretrained does not keep
    truncation_side, and AutoTokenizer.from_pretrained reads it from there)."""
    path = Path(directory) / "tokenizer_config.json"
    cfg = json.loads(path.read_text()) if path.exists() else {}
    cfg.update(fields)
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def import_head(model_dir, out=None, cache_dir="cache", dtype: str = "auto", max_length: int | None = None,
                truncation_side: str | None = None) -> ImportResult:
    """An orm-cache head from the ``score`` layer of the sequence-classification reward model in
    ``model_dir``, over that model's backbone (``last@-1``); saved to ``out`` (default
    ``cache/heads/imported-<name>.pt``). Loads the config, tokenizer and score layer only."""
    from ..text import tokenizer_chat
    from ..models import EncoderError
    from ..encode.model import Encoder
    from ..store import short

    directory = Path(model_dir).expanduser()
    if not directory.is_dir():
        raise EncoderError(f"--model {model_dir}: no such directory (import-head reads a local reward model "
                           "directory)")
    cfg_file = directory / "config.json"
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as e:
        raise ExportError(f"{directory}: no readable config.json ({e})") from None
    archs = cfg.get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        raise ExportError(f"{directory}: a {', '.join(archs) or 'model of unknown class'}, not a "
                          "...ForSequenceClassification reward model; import-head takes such a model's score layer")
    n_labels = cfg.get("num_labels", len(cfg.get("id2label") or {}) or 2)
    if n_labels != 1:
        raise ExportError(f"{directory}: num_labels={n_labels}; a reward model scores with one output (num_labels=1)")
    check_architecture(cfg.get("model_type", "?"), "import")
    weight, bias, _ = _score_layer(directory)
    # the width the backbone's last hidden state has (OPT projects it to word_embed_proj_dim)
    hidden = cfg.get("word_embed_proj_dim") or cfg.get("hidden_size") or cfg.get("n_embd") or cfg.get("d_model")
    if isinstance(hidden, int) and len(weight) != hidden:
        raise ExportError(f"{directory}: score.weight is {len(weight)} wide but the backbone's hidden size is {hidden}")
    max_length, truncation_side = _tokenizer_limits(directory, cfg, max_length, truncation_side)
    encoder = Encoder(EncoderSpec(model=str(directory), dtype=dtype, max_length=max_length,
                                  truncation_side=truncation_side, pooling=("last",), layers=(-1,)), "auto")
    if encoder.tokenizer.pad_token_id is not None and encoder.tokenizer.pad_token_id == encoder.tokenizer.eos_token_id:
        log.warning("%s pads with its eos token: the model itself scores a text that ends in eos one token early "
                    "(at the last non-pad token), orm-cache at the eos; scores of such texts differ", directory)
    template, tokens = tokenizer_chat(str(directory))
    recipe = TextRecipe(chat_template=template, chat_tokens=tokens if template else None, kind="auto")
    meta = {
        "fingerprint": encoder.fingerprint, "encoder_identity": encoder.identity,
        "encoder_spec": encoder.spec_record, "feature": "last@-1", "recipe": recipe.to_dict(),
        "imported": {"from": str(directory.resolve()), "architectures": archs,
                     "score_bias_in_model": bias is not None,
                     "note": "score = the reward model's logit (its score layer over last@-1 of its backbone)"},
    }
    head = LinearHead(weight.astype(np.float32), float(bias or 0.0), meta)
    path = Path(out) if out else Path(cache_dir) / "heads" / f"imported-{directory.name}-{short(encoder.fingerprint)[:8]}.pt"
    head.save(path)
    head.source = str(path)
    return ImportResult(head, path)
