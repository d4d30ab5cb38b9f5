"""Loading a frozen Hugging Face encoder, its identity (for the fingerprint) and its forward pass.

``transformers`` is imported here and only here (and in :mod:`orm_cache.testing`): stage 2 never
needs it.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch

from .spec import EncoderSpec
from ..store.fingerprint import SCHEMA_VERSION, fingerprint
from ..models import BUNDLED_SMOLLM2, EncoderError, local_model_digest, resolve_model_path
from .pooling import pool, pool_prefixes, response_logprob
from ..store.columns import LOGPROB, LOGPROB_TOKENS
from .response import response_token_starts

log = logging.getLogger(__name__)

def tokenizer_identity(tok) -> str:
    """sha256 of what decides token ids: the fast tokenizer's full JSON (vocab, merges,
    normaliser, post-processor) or, for slow ones, the vocabulary; plus class and special tokens."""
    h = hashlib.sha256(type(tok).__name__.encode())
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(repr(sorted(tok.get_vocab().items())).encode())
    h.update(repr(sorted((k, str(v)) for k, v in tok.special_tokens_map.items())).encode())
    return h.hexdigest()


def max_positions(config) -> int | None:
    """The longest input the model's position embeddings cover (None when it does not say)."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        n = getattr(config, name, None)
        if isinstance(n, int) and n > 0:
            return n
    return None


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EncoderError("--device cuda was asked for, but torch sees no CUDA device")
    return device


def is_causal(config) -> bool:
    """Whether a model's tokens attend only to earlier tokens: a causal LM architecture that is not
    also a masked LM (BERT-style encoders attend both ways)."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    t = config.model_type
    return t in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and t not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def check_causal(config, model: str, why: str = "--likelihood") -> None:
    """Refuse, in one line, log-likelihoods (or step prefixes from one pass: ``why``) from a model
    that is not a causal LM (a BERT-style encoder's tokens see both sides) or, for likelihoods,
    whose logits are post-processed (soft-capping, scaling)."""
    t = config.model_type
    if not is_causal(config):
        gives = ("it gives no next-token probabilities" if why == "--likelihood" else
                 "a prefix's vectors depend on what follows it and one pass over a trace cannot give them (score "
                 "--steps embeds each prefix of such a head's traces on its own)")
        raise EncoderError(f"{why} needs a causal (decoder) LM; {model!r} is a {t} model, whose tokens "
                           f"attend both ways, so {gives}")
    if why != "--likelihood":
        return
    for name in ("final_logit_softcapping", "logit_scale", "output_multiplier_scale"):
        if getattr(config, name, None) not in (None, 1, 1.0):
            raise EncoderError(f"--likelihood: {model!r} post-processes its logits ({name}); not supported")


class Encoder:
    """A frozen encoder: tokenizer + model, loaded lazily; counts the texts and batches it runs.

    ``identity`` (and so the fingerprint) is known after loading only the config and tokenizer,
    so a run whose texts are all cached never loads the weights.
    """

    def __init__(self, spec: EncoderSpec, device: str = "auto", padding_side: str | None = None):
        from transformers import AutoConfig, AutoTokenizer

        self.spec = spec
        self.device = resolve_device(device)
        self.torch_dtype = resolve_dtype(spec.dtype, self.device)
        self.path = resolve_model_path(spec.model)
        try:
            self.config = AutoConfig.from_pretrained(self.path, revision=spec.revision)
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, revision=spec.revision)
        except (OSError, ValueError) as e:
            raise EncoderError(f"cannot load model {spec.model!r}: {str(e).splitlines()[0]}") from e
        tok = self.tokenizer
        tok.truncation_side = spec.truncation_side
        if padding_side is not None:
            tok.padding_side = padding_side
        if tok.pad_token_id is None:  # decoder-only tokenizers often have none; masked anyway
            tok.pad_token = tok.eos_token
        positions = max_positions(self.config)
        if positions is not None and spec.max_length > positions:
            raise EncoderError(f"--max-length {spec.max_length} is beyond the {positions} positions "
                               f"{spec.model!r} was built for; use --max-length {positions} or less")
        if spec.likelihood:
            check_causal(self.config, spec.model)
        n_layers = getattr(self.config, "num_hidden_layers", None)
        if n_layers is not None:
            for layer in spec.layers:
                if not -(n_layers + 1) <= layer <= n_layers:
                    raise EncoderError(f"layer {layer} is out of range for a {n_layers}-layer model "
                                       f"(hidden states are indexed -{n_layers + 1}..{n_layers})")
        self.model = None
        self._model_fp32 = None
        self._lm_weight = self._lm_bias = None  # the LM head in float32 (likelihood only)
        self.texts_forwarded = 0
        self.batches_forwarded = 0

    # -- identity ------------------------------------------------------------------------------
    @property
    def model_identity(self) -> dict:
        p = Path(self.path)
        if p.is_dir():
            return {"source": "local", "digest": local_model_digest(p),
                    "model_type": self.config.model_type}
        return {"source": "hub", "id": self.spec.model,
                "revision": getattr(self.config, "_commit_hash", None) or self.spec.revision or "main",
                "model_type": self.config.model_type}

    @property
    def spec_record(self) -> dict:
        """The spec as a later process can rebuild this encoder from (local paths made absolute)."""
        d = self.spec.to_dict()
        d["pooling"], d["layers"] = list(d["pooling"]), list(d["layers"])
        if Path(self.spec.model).is_dir():
            d["model"] = str(Path(self.spec.model).resolve())
        d["dtype"] = str(self.torch_dtype).removeprefix("torch.")
        return d

    @property
    def identity(self) -> dict:
        if not hasattr(self, "_identity"):
            s = self.spec
            self._identity = {
                "schema_version": SCHEMA_VERSION,
                "model": self.model_identity,
                "tokenizer": tokenizer_identity(self.tokenizer),
                "dtype": str(self.torch_dtype).removeprefix("torch."),
                "max_length": s.max_length,
                "truncation_side": s.truncation_side,
            }  # poolings and layers are the store's columns, not its identity
        return self._identity

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.identity)

    @property
    def vector_dtype(self) -> str:
        """Stored precision: fp16 vectors from an fp16 encoder, float32 otherwise (bf16 fits)."""
        return "float16" if self.torch_dtype == torch.float16 else "float32"

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def padding_side(self) -> str:
        return self.tokenizer.padding_side

    # -- work ----------------------------------------------------------------------------------
    @property
    def pools_response(self) -> bool:
        """Whether ``response_mean`` is pooled (then :meth:`tokenize` finds each response's tokens)."""
        return "response_mean" in self.spec.pooling or self.spec.likelihood

    def tokenize(self, texts: list[str], starts: list[int | None] | None = None,
                 special_tokens: bool | list[bool] = True
                 ) -> tuple[list[list[int]], np.ndarray, np.ndarray, np.ndarray]:
        """Token ids per text (truncated to max_length), their lengths, which were truncated, and
        the index of each text's first response token (:mod:`.response`; -1: not found, pool every
        token). ``starts``: the character offset of each response (None: the texts are responses
        alone, start 0); used only when response_mean is pooled (the indices are 0 otherwise).
        ``special_tokens``: whether the tokenizer adds its special tokens (BOS, [CLS]/[SEP]…), for
        all texts or per text; not for chat-rendered text, which carries the template's own."""
        if isinstance(special_tokens, bool):
            return self._tokenize(texts, starts, special_tokens)
        special = np.asarray(special_tokens, dtype=bool).reshape(len(texts))
        if special.all() or not special.any():
            return self._tokenize(texts, starts, bool(special.all()) if len(texts) else True)
        ids: list = [None] * len(texts)
        n, truncated, first = (np.zeros(len(texts), np.int32), np.zeros(len(texts), bool),
                               np.zeros(len(texts), np.int32))
        for flag in (True, False):
            idx = np.flatnonzero(special == flag)
            part = self._tokenize([texts[i] for i in idx], None if starts is None else [starts[i] for i in idx], flag)
            for j, i in enumerate(idx):
                ids[i] = part[0][j]
            n[idx], truncated[idx], first[idx] = part[1], part[2], part[3]
        return ids, n, truncated, first

    def _tokenize(self, texts: list[str], starts: list[int | None] | None, special: bool):
        tok, L = self.tokenizer, self.spec.max_length
        offsets = self.pools_response and starts is not None and tok.is_fast
        enc = tok(texts, truncation=False, verbose=False, return_offsets_mapping=offsets, add_special_tokens=special)
        ids, spans = enc["input_ids"], enc.get("offset_mapping")
        n_full = [len(x) for x in ids]
        truncated = np.array([n > L for n in n_full], dtype=bool)
        long = np.flatnonzero(truncated)
        if len(long):
            cut = tok([texts[i] for i in long], truncation=True, max_length=L, return_offsets_mapping=offsets,
                      add_special_tokens=special)
            for j, i in enumerate(long):
                ids[i] = cut["input_ids"][j]
                if offsets:
                    spans[i] = cut["offset_mapping"][j]
        n = np.array([len(x) for x in ids], dtype=np.int32)
        first = np.zeros(len(texts), dtype=np.int32)
        if self.pools_response and starts is not None:
            first = response_token_starts(tok, texts, starts, ids, spans if offsets else None, n_full)
        return ids, n, truncated, first

    def load(self) -> None:
        if self.model is not None:
            return
        from transformers import AutoModel, AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        log.info("loading %s (%s) on %s", self.spec.model, self.torch_dtype, self.device)
        verbosity = hf_logging.get_verbosity()
        # A reward model's directory (import-head) holds a score layer the backbone does not use:
        # expected, so transformers' load report of "unexpected" keys is not shown.
        hf_logging.set_verbosity_error()
        try:
            cls = AutoModelForCausalLM if self.spec.likelihood else AutoModel
            model = cls.from_pretrained(self.path, revision=self.spec.revision, dtype=self.torch_dtype)
            if self.spec.likelihood:  # the same backbone as AutoModel's, and its own LM head beside it
                head = model.get_output_embeddings()
                self._lm_weight = head.weight.detach().float().to(self.device)  # (V, D)
                bias = getattr(head, "bias", None)
                self._lm_bias = None if bias is None else bias.detach().float().to(self.device)
                model = model.base_model
        except Exception as e:  # OSError, ValueError, safetensors' own error for a truncated file, …
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            again = (f" (its converted copy {self.path} is damaged: delete that directory and it is converted "
                     "again)") if self.spec.model == BUNDLED_SMOLLM2 else f" ({self.path})"
            raise EncoderError(f"cannot load weights of {self.spec.model!r}: {first}{again}") from e
        finally:
            hf_logging.set_verbosity(verbosity)
        self.model = model.to(self.device).eval().requires_grad_(False)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                response_start: torch.Tensor | None = None, float32: bool = False, prefixes=None):
        """``(B, T)`` ids and mask -> ``{column: (B, D)}`` pooled vectors, still on the device:
        every pooling of every layer from this one forward pass. ``response_start`` (B,): each
        row's first response token among its real tokens (from :meth:`tokenize`; None: all).
        ``float32=True`` runs a float32 copy of the model (made on first use): the fallback for
        rows whose half-precision states overflowed. ``prefixes``: ``(rows, ends, firsts)`` (P,) each
        (:func:`~.pooling.pool_prefixes`); then ``(columns, prefix columns)`` come back, the second
        ``{column: (P, D)}`` (a causal model only: :func:`check_causal`)."""
        self.load()
        model = self.model
        if float32 and self.torch_dtype != torch.float32:
            if self._model_fp32 is None:
                import copy

                self._model_fp32 = copy.deepcopy(self.model).float()
            model = self._model_fp32
        input_ids = input_ids.to(self.device, non_blocking=True)
        attention_mask = attention_mask.to(self.device, non_blocking=True)
        if response_start is not None:
            response_start = response_start.to(self.device, non_blocking=True)  # (B,)
        need_all = any(layer != -1 for layer in self.spec.layers)
        out = model(input_ids=input_ids, attention_mask=attention_mask,
                    output_hidden_states=need_all, use_cache=False)
        self.batches_forwarded += 1
        self.texts_forwarded += int(input_ids.shape[0])
        result, pre = {}, {}
        if prefixes is not None:
            prefixes = [None if x is None else x.to(self.device) for x in prefixes]
        for layer in self.spec.layers:
            hidden = out.hidden_states[layer] if need_all else out.last_hidden_state  # (B, T, D)
            for how in self.spec.pooling:
                result[f"{how}@{layer}"] = pool(hidden, attention_mask, how, response_start)  # (B, D)
                if prefixes is not None:
                    pre[f"{how}@{layer}"] = pool_prefixes(hidden, attention_mask, how, *prefixes)  # (P, D)
        if self.spec.likelihood:
            import torch.nn.functional as F

            last = out.last_hidden_state  # (B, T, D), what the LM head reads
            result[LOGPROB], count = response_logprob(  # (B, 3), (B,)
                last, input_ids, attention_mask, response_start,
                lambda h: F.linear(h.float(), self._lm_weight, self._lm_bias))
            result[LOGPROB_TOKENS] = count.unsqueeze(1)  # (B, 1): stored beside, not a feature
        return result if prefixes is None else (result, pre)
