"""Binding a head or a data spec to its store and its texts: which store holds a head's
vectors, the recipe a head's data is read with, and the checks every stage-2 use case makes
before any work (outputs writable and not inputs, distinct splits, checkpoint targets)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..data.spec import DataSpec
from ..text.recipe import TextRecipe
from ..data import load_split
from ..errors import OutputError, UserError
from ..head import Head
from ..store import StoreError, VectorStore, short
from ..store.resolve import encoder_store, store_by_prefix
from .vectors import embed_command, split_vectors


def check_outputs(data_spec: DataSpec, *outputs) -> None:
    """Before any work: each output can be created and is not the data file the command reads."""
    from ..outputs import check_not_input, check_output_path

    for out in outputs:
        if out is not None:
            check_output_path(out)
            check_not_input(out, data_file=data_spec.data if Path(data_spec.data).is_file() else None)


def check_distinct(a, b, flag: str, other: str) -> None:
    """Refuse split ``b`` (named by ``flag``) when it holds the same rows as split ``a``: a file
    without a split column is read whole for every --split, and selecting or reporting on the
    training rows would measure how well the head fits them (and --refit would count them twice)."""
    if a.identity["pairs_sha256"] == b.identity["pairs_sha256"] or a.texts.keys() == b.texts.keys():
        why = (f"{b.source} has no split column, so every --split reads all of it" if a.source == b.source else
               f"{a.source} and {b.source} hold the same rows")
        raise UserError(f"{flag} {b.split} is the same rows as {other} {a.split} ({why}); give data with separate "
                        "splits (a directory of split files, or a 'split' column)")


def check_head_target(path: Path, overwrite: bool, given: bool) -> None:
    """Before training: refuse to replace an existing checkpoint at a default path unless
    ``overwrite`` (a path given with --out is replaced atomically, like every output)."""
    if not given and not overwrite and Path(path).exists():
        raise OutputError(f"{path} exists (a head trained with this exact configuration and data); pass "
                          "--overwrite to replace it, or --out another path")


def store_for_head(head: Head, cache_dir, store: str | None = None) -> VectorStore:
    """The store a head was trained on (by its fingerprint), or ``--store`` for an imported head;
    for a head over several encoders, joined with theirs (:mod:`.joined`)."""
    from .joined import store_with_others

    return store_with_others(head, _first_store(head, cache_dir, store), cache_dir)


def _first_store(head: Head, cache_dir, store: str | None = None) -> VectorStore:
    if head.fingerprint:
        if store and not head.fingerprint.startswith(store):
            raise StoreError(f"--store {store} is not the store of this head (it was trained on encoder "
                             f"{short(head.fingerprint)}); leave --store out for a head that records its encoder")
        vs = encoder_store(cache_dir, head.fingerprint)
        if not vs.shards:
            raise StoreError(f"no vectors of the head's encoder {short(head.fingerprint)} under {cache_dir}; "
                             "embed the split with that encoder first (see the head's encoder_spec)")
    else:
        if not store:
            raise StoreError("this head carries no encoder fingerprint (a reference-format import); "
                             "name the store of its encoder with --store FINGERPRINT")
        vs = store_by_prefix(cache_dir, store)
    return vs  # its width is checked against the head's feature by with_store_defaults


def load_vectors(data_spec: DataSpec, store: VectorStore, feature: str | None, cache_dir, check=None,
                 step_aggregate: str | None = None):
    """A split's vectors from ``store``; a missing vector names the command that embeds them
    into exactly this store (its model, dtype, max length, every pooling and layer). Conversation
    rows without a chat template in ``data_spec`` take the store's encoder's tokenizer's.
    ``check(data)``, when given, sees the split before its vectors are looked for (so a request
    the data cannot answer is refused before the user is sent to embed it). ``step_aggregate``:
    the split's traces carry their step prefixes (``sv.data.steps``), and ``sv.trace_scores(head)``
    aggregates those prefixes' scores so (:func:`~.vectors.step_scores`)."""
    if step_aggregate:
        data_spec = replace(data_spec, step_prefixes=True)
    data = load_split(data_spec, store.spec())
    if check is not None:
        check(data)
    hint = embed_command(data_spec, store.spec() or {}, cache_dir, feature)
    sv = split_vectors(data, store, feature, hint)
    if step_aggregate:
        sv.step_aggregate = (step_aggregate, store, hint)
    return sv


def head_data_spec(head: Head, data_spec: DataSpec, override_recipe: bool = False) -> DataSpec:
    """``data_spec`` with the head's text recipe filled in where the options did not give one;
    a recipe given explicitly that differs from the head's is refused (RecipeError)."""
    r = TextRecipe.for_head(head.recipe, data_spec.template, data_spec.prompt_col, override_recipe,
                            data_spec.chat_template, data_spec.recipe_kind)
    return replace(data_spec.with_recipe(r), prompt_col=r.prompt_col or "",
                   require_prompt=prompt_required(head, r, override_recipe),
                   step_pattern=data_spec.step_pattern or head_step_pattern(head))


def head_step_pattern(head: Head, given: str | None = None) -> str | None:
    """The step delimiter to score ``head`` with: ``given``, else the one its training steps were
    cut by (a head trained on prefixes or step labels records it), else None (the default)."""
    return given or (head.meta.get("data") or {}).get("step_pattern")


def prompt_required(head: Head, recipe: TextRecipe, override_recipe: bool = False) -> bool:
    """Must every scored row carry the prompt column? Yes for a head whose training texts joined
    prompts from it (unless the recipe is overridden on purpose); an imported reward model was
    not trained by orm-cache, so its recipe says how to join a prompt, not that one is needed."""
    trained_with_prompts = bool((head.recipe or {}).get("prompt_col")) and "imported" not in head.meta
    return bool(not override_recipe and recipe.prompt_col and trained_with_prompts)


def with_store_defaults(head: Head, vs: VectorStore, feature: str | None = None) -> Head:
    """A reference-format head (weights only) completed from the store it scores: the store's
    encoder spec and fingerprint, and ``feature`` (default: ``last@-1``, the reference recipe's
    pooling, when the store has it, else its first column). A head that records its own is
    returned unchanged (``feature`` overrides)."""
    meta = dict(head.meta)
    if feature:
        meta["feature"] = feature
    if not meta.get("feature"):
        meta["feature"] = "last@-1" if "last@-1" in vs.columns else (vs.columns[0] if vs.columns else None)
    if not meta.get("fingerprint"):
        meta["fingerprint"] = vs.fp
        meta.setdefault("encoder_spec", vs.spec())
    vs.feature_columns(meta["feature"])  # a column the store lacks is one line listing those it has
    out = head.with_meta(meta)
    out.check_store(vs)  # another encoder, or a feature of another width than the head takes
    return out


def encoder_store_for(data_spec: DataSpec, enc_spec, cache_dir, feature: str | None, store: str | None = None):
    """The store of ``enc_spec``'s encoder that holds ``feature`` (``find_store``); when there is
    none, the one line says why: the ``embed`` command that fills it for ``data_spec``'s split, or
    that the model is not a causal LM when the feature reads ``logprob``."""
    from ..store import find_store

    try:
        return find_store(cache_dir, enc_spec, feature, store,
                          embed_hint=embed_command(data_spec, enc_spec, cache_dir, feature))
    except StoreError:
        _explain_missing_logprob(enc_spec, feature)  # a bidirectional encoder has no likelihood to embed
        raise


def _explain_missing_logprob(enc_spec, feature: str | None) -> None:
    """Called when no store holds ``feature``: if it reads ``logprob`` and ``enc_spec``'s model is
    not a causal LM, that is the reason (one line), not a missing ``embed --likelihood``."""
    if not feature or "logprob" not in feature.split("+"):
        return
    from transformers import AutoConfig

    from ..encode.model import check_causal
    from ..models import resolve_model_path

    try:
        config = AutoConfig.from_pretrained(resolve_model_path(enc_spec.model), revision=enc_spec.revision)
    except (OSError, ValueError):
        return  # the store's own message says what is there
    check_causal(config, enc_spec.model)
