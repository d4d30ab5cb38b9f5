"""Stage 2 entry points: fit a head and evaluate it, from cached vectors only (no model import).

The CLI calls these; so can a notebook.
"""

from __future__ import annotations

import hashlib
import logging
import math
import warnings

import numpy as np
from dataclasses import dataclass, replace
from pathlib import Path

from .config import DataSpec, EncoderSpec, HeadConfig, TextRecipe
from .data import DataError, load_split
from .errors import OutputError, UserError
from .evaluate import evaluate
from .evaluate.metrics import fit_temperature
from .evaluate.report import margins_of
from .head import Head, train
from .store import StoreError, VectorStore, find_store, short, store_dir
from .store.resolve import encoder_store, store_by_prefix
from .vectors import embed_command, split_vectors

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    head: Head
    path: Path
    train_result: object
    eval_report: dict | None


def check_outputs(data_spec: DataSpec, *outputs) -> None:
    """Before any work: each output can be created and is not the data file the command reads."""
    from .outputs import check_not_input, check_output_path

    for out in outputs:
        if out is not None:
            check_output_path(out)
            check_not_input(out, data_file=data_spec.data if Path(data_spec.data).is_file() else None)


def default_head_path(cache_dir, fp: str, feature: str, cfg: HeadConfig, data: dict | None = None) -> Path:
    """``cache/heads/<fingerprint>-<feature>-<kind>[xK]-<objective>-<solver>-seed<seed>-<digest>.pt``:
    the digest covers every field of the effective configuration and the training pairs, so two
    heads that differ in anything (head kind, objective, ensemble, lr, data) never share a name."""
    from .store.fingerprint import canonical_json

    what = {"config": replace(cfg, feature=feature).effective().to_dict(),
            "data": (data or {}).get("pairs_sha256")}
    digest = hashlib.sha256(canonical_json(what).encode()).hexdigest()[:8]
    kind = cfg.head + (f"x{cfg.ensemble}" if cfg.ensemble > 1 else "")
    return Path(cache_dir) / "heads" / (f"{short(fp)[:8]}-{feature.replace('@', '').replace('+', '_')}-{kind}-"
                                        f"{cfg.objective}-{cfg.solver}-seed{cfg.seed}-{digest}.pt")


def check_distinct(a, b, flag: str, other: str) -> None:
    """Refuse split ``b`` (named by ``flag``) when it holds the same rows as split ``a``: a file
    without a split column is read whole for every --split, and selecting or reporting on the
    training rows would measure how well the head fits them (and --refit would count them twice)."""
    if a.identity["pairs_sha256"] == b.identity["pairs_sha256"] or a.texts.keys() == b.texts.keys():
        why = (f"{b.source} has no split column, so every --split reads all of it" if a.source == b.source else
               f"{a.source} and {b.source} hold the same rows")
        raise UserError(f"{flag} {b.split} is the same rows as {other} {a.split} ({why}); give data with separate "
                        "splits (a directory of split files, or a 'split' column)")


def sweep_head_path(cache_dir, fp: str, cfgs, select_on: str, select_by: str, refit: bool, data) -> Path:
    """``cache/heads/sweep-best-<fingerprint>-<digest>.pt``; the digest covers the configurations,
    the selection rule and the training pairs."""
    from .store.fingerprint import canonical_json

    what = {"configs": sorted(canonical_json(c.effective().to_dict()) for c in cfgs), "select_on": select_on,
            "select_by": select_by, "refit": refit, "data": data.identity["pairs_sha256"]}
    digest = hashlib.sha256(canonical_json(what).encode()).hexdigest()[:8]
    return Path(cache_dir) / "heads" / f"sweep-best-{short(fp)[:8]}-{digest}.pt"


def check_head_target(path: Path, overwrite: bool, given: bool) -> None:
    """Before training: refuse to replace an existing checkpoint at a default path unless
    ``overwrite`` (a path given with --out is replaced atomically, like every output)."""
    if not given and not overwrite and Path(path).exists():
        raise OutputError(f"{path} exists (a head trained with this exact configuration and data); pass "
                          "--overwrite to replace it, or --out another path")


def store_for_head(head: Head, cache_dir, store: str | None = None) -> VectorStore:
    """The store a head was trained on (by its fingerprint), or ``--store`` for an imported head."""
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


def spec_for_feature(enc_spec: EncoderSpec, feature: str | None) -> EncoderSpec:
    """``enc_spec`` with the poolings and layers ``feature`` needs added (for the embed hint of
    a feature no store holds: that command then stores it)."""
    return enc_spec.with_feature(feature)


def load_vectors(data_spec: DataSpec, store: VectorStore, feature: str | None, cache_dir):
    """A split's vectors from ``store``; a missing vector names the command that embeds them
    into exactly this store (its model, dtype, max length, every pooling and layer). Conversation
    rows without a chat template in ``data_spec`` take the store's encoder's tokenizer's."""
    data = load_split(data_spec, store.spec())
    return split_vectors(data, store, feature, embed_command(data_spec, store.spec() or {}, cache_dir, feature))


def head_data_spec(head: Head, data_spec: DataSpec, override_recipe: bool = False) -> DataSpec:
    """``data_spec`` with the head's text recipe filled in where the options did not give one;
    a recipe given explicitly that differs from the head's is refused (RecipeError)."""
    r = TextRecipe.for_head(head.recipe, data_spec.template, data_spec.prompt_col, override_recipe,
                            data_spec.chat_template, data_spec.recipe_kind)
    return replace(data_spec.with_recipe(r), prompt_col=r.prompt_col or "",
                   require_prompt=prompt_required(head, r, override_recipe))


def prompt_required(head: Head, recipe: TextRecipe, override_recipe: bool = False) -> bool:
    """Must every scored row carry the prompt column? Yes for a head whose training texts joined
    prompts from it (unless the recipe is overridden on purpose); an imported reward model was
    not trained by orm-cache, so its recipe says how to join a prompt, not that one is needed."""
    trained_with_prompts = bool((head.recipe or {}).get("prompt_col")) and "imported" not in head.meta
    return bool(not override_recipe and recipe.prompt_col and trained_with_prompts)


def fit_head(data_spec: DataSpec, enc_spec: EncoderSpec, cfg: HeadConfig, cache_dir="cache",
             out: str | Path | None = None, eval_split: str | None = "validation",
             store: str | None = None, overwrite: bool = False) -> FitResult:
    """Train a head on ``data_spec``'s pairs; evaluate on ``eval_split`` when it is cached (and fit
    the calibration temperature there); save the checkpoint (an existing one at the default path
    only with ``overwrite``)."""
    check_outputs(data_spec, out)
    vs = find_store(cache_dir, enc_spec, cfg.feature, store,
                    embed_hint=embed_command(data_spec, spec_for_feature(enc_spec, cfg.feature), cache_dir))
    sv = load_vectors(data_spec, vs, cfg.feature, cache_dir)
    feature = sv.feature
    if cfg.feature is None:
        cfg = replace(cfg, feature=feature)
    path = Path(out) if out else default_head_path(cache_dir, vs.fp, feature, cfg, sv.data.identity)
    check_head_target(path, overwrite, given=out is not None)
    res = train(sv.X, sv.ci, sv.ri, cfg, training_points(sv, cfg))
    head = build_head(vs, sv, cfg, res)
    report = None
    if eval_split:
        try:  # built exactly as the training texts were (an auto recipe resolved on the training split)
            ev = load_vectors(replace(data_spec.with_recipe(sv.data.recipe), split=eval_split), vs, feature, cache_dir)
        except (DataError, StoreError) as e:
            log.info("not evaluating on %s: %s", eval_split, e)
        else:
            if ev.data.identity["pairs_sha256"] == sv.data.identity["pairs_sha256"]:
                log.warning("not evaluating on %s: its pairs are the training pairs (a single file or Dataset "
                            "without a split column is used whole for every --split)", eval_split)
            else:
                report = calibrate_and_evaluate(head, ev)
    head.save(path)
    return FitResult(head, path, res, report)


def labelled_points(sv):
    """A pointwise split's labelled traces as rows of its ``X`` (None for a pairwise split)."""
    from .head.train import Points

    if sv.data.labels is None:
        return None
    return Points(sv.rows(sv.data.keys), sv.data.labels.astype(np.float64))


def training_points(sv, cfg: HeadConfig):
    """The labelled traces a pointwise head trains on (None for a pairwise one); one line when
    the split has none."""
    if cfg.objective != "pointwise":
        return None
    if sv.data.labels is None:
        raise DataError(f"--objective pointwise trains on labelled traces, but split {sv.data.split!r} of "
                        f"{sv.data.source} is pairwise (chosen/rejected rows); use pointwise data (text or "
                        "messages + label) or the pairwise objective")
    return labelled_points(sv)


def build_head(vs: VectorStore, sv, cfg: HeadConfig, res) -> Head:
    """A head from a training result, with everything a checkpoint records beside the weights
    (refused in one line when training diverged or the vectors are not finite)."""
    from .head.train import check_trained

    check_trained(res, sv.X)
    train_acc = res.accuracy if res.accuracy is not None else float((margins_of(res.head.score(sv.X), sv.ci, sv.ri) > 0).mean())
    meta = {
        "fingerprint": vs.fp, "encoder_identity": vs.identity(), "encoder_spec": vs.spec(), "feature": sv.feature,
        "config": cfg.effective().to_dict(), "data": sv.data.identity, "recipe": dict(sv.data.recipe),
        "train": {"score_mean": 0.0, "score_std": res.score_std, "final_loss": res.final_loss,
                  "accuracy": train_acc, "seconds": res.seconds, "steps": res.steps,
                  "history": [list(h) for h in res.history],
                  "bias_rule": "bias set after training so that training traces score 0 on average"
                  if cfg.objective == "pairwise" else "bias learned: the score is the log-odds of a correct trace"},
        "head": {"kind": cfg.head, "members": cfg.ensemble, "objective": cfg.objective,
                 **({"hidden": cfg.hidden} if cfg.head == "mlp" else {}),
                 **({"ensemble_by": cfg.resample} if cfg.ensemble > 1 else {})},
    }
    if cfg.objective == "pointwise":
        meta["train"]["score_mean"] = float(res.head.score(sv.X).mean(dtype=np.float64))
    return res.head.with_meta(meta)


def calibrate(head: Head, sv) -> float:
    """Fit the temperature of σ(Δ/T) on ``sv``'s pairs and record it in the head (None when no
    pair is wrong, so no finite T is optimal); returns T."""
    T = fit_temperature(margins_of(head.score(sv.X), sv.ci, sv.ri))
    head.meta["calibration"] = {"temperature": T if math.isfinite(T) else None, "fitted_on": sv.data.split}
    return T


def calibrate_and_evaluate(head: Head, ev) -> dict:
    """Fit the temperature on ``ev``'s split, record it and the headline in the head; return the
    full report on that split."""
    T = calibrate(head, ev)
    report = evaluate(head, ev, temperature=T)
    report["calibration"]["fitted_on"] = ev.data.split
    head.meta.setdefault("metrics", {})[ev.data.split] = _headline(report)
    return report


def _headline(r: dict) -> dict:
    keys = ("accuracy", "ci", "margin", "pairs")
    return {k: r[k] for k in keys} | ({"best_of_n": r["best_of_n"]} if "best_of_n" in r else {})


def evaluate_split(head_path, data_spec: DataSpec, cache_dir="cache", calibrate_on: str | None = "validation",
                   bootstrap: int = 1000, ci_level: float = 0.9, seed: int = 0, length_edges=(128, 256),
                   store: str | None = None, feature: str | None = None, save_calibration: bool = False,
                   override_recipe: bool = False, by=()) -> dict:
    """The full metric table of a head on one split, with the head's text recipe.

    The calibration temperature T is fitted on ``calibrate_on`` when that split is cached (the
    evaluated split itself only when named); otherwise calibration is reported for T = 1 and
    said so. The checkpoint is rewritten with T only when ``save_calibration`` is set. ``by``:
    metadata columns to break the headline down by (``report["by"]``); a column no row has is a
    DataError naming the columns there are, raised before anything is computed or saved."""
    from .evaluate.by import check_columns

    by = list(dict.fromkeys([by] if isinstance(by, str) else by or ()))
    head = Head.load(head_path)
    vs = store_for_head(head, cache_dir, store)
    head = with_store_defaults(head, vs, feature)
    feature = head.feature
    data_spec = head_data_spec(head, data_spec, override_recipe)
    if by:
        data_spec = replace(data_spec, keep_columns=tuple(dict.fromkeys((*data_spec.keep_columns, *by))))
    sv = load_vectors(data_spec, vs, feature, cache_dir)
    check_columns(sv.data, by, data_spec.group_col)
    T, note = None, "no calibration split (--calibrate-on ''): reported for T = 1"
    if calibrate_on:
        try:
            cal = sv if calibrate_on == data_spec.split else load_vectors(
                replace(data_spec, split=calibrate_on), vs, feature, cache_dir)
        except (DataError, StoreError) as e:
            note = f"calibration split {calibrate_on!r} unavailable ({e}); reported for T = 1"
            log.warning("not calibrating: %s", note)
        else:
            T = calibrate(head, cal)
            note = None
            if save_calibration:
                if not math.isfinite(T):
                    raise UserError(f"no finite temperature fits {calibrate_on} (no pair is misordered); "
                                     "the checkpoint is left as it was")
                head.save(head_path)
    if save_calibration and T is None:
        raise UserError(f"--save-calibration: no temperature was fitted ({note}); the checkpoint is left as it was")
    report = evaluate(head, sv, bootstrap, ci_level, seed, length_edges, temperature=T, by=by)
    if T is not None:
        report["calibration"]["fitted_on"] = calibrate_on
        report["calibration"]["saved_to_checkpoint"] = bool(save_calibration)
    else:
        report["calibration"]["note"] = note
    report["head"] = str(head_path)
    report["fingerprint"] = vs.fp
    return report


def verify_head(head_path, data_spec: DataSpec, cache_dir="cache", sample: int = 64, seed: int = 0,
                atol: float | None = None, device: str = "auto", batch_tokens: int | None = None,
                store: str | None = None, feature: str | None = None, override_recipe: bool = False):
    """Cached vs live scores for a seeded sample of ``data_spec``'s pairs (loads the encoder).
    A reference-format head (no recorded encoder) is checked against ``store``'s encoder."""
    from .evaluate.verify import verify
    from .live import LiveScorer

    head = Head.load(head_path)
    vs = store_for_head(head, cache_dir, store)
    head = with_store_defaults(head, vs, feature)
    sv = load_vectors(head_data_spec(head, data_spec, override_recipe), vs, head.feature, cache_dir)
    scorer = LiveScorer(head, device, batch_tokens)
    return verify(head, sv, scorer, sample, seed, atol)


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


@dataclass
class SweepResult:
    rows: list  # SweepRow, sorted best first
    best: Head
    path: Path
    seconds: float
    report: dict | None  # --report-on split, best head only


def sweep_heads(data_spec: DataSpec, enc_spec: EncoderSpec, base: HeadConfig, grid: dict | list[dict],
                cache_dir="cache", select_on: str = "validation", report_on: str | None = None, out=None,
                store: str | None = None, quiet: bool = True, select_by: str = "accuracy",
                refit: bool = False, overwrite: bool = False) -> SweepResult:
    """Train every distinct configuration of ``grid`` (one field -> values mapping, or a list of
    sub-grids; on top of ``base``) on ``data_spec``'s split, rank them on ``select_on`` by
    ``select_by`` (accuracy or loss), save the best; evaluate only that one on ``report_on``
    (never selecting on it). ``refit``: the selected configuration is trained again on the
    training and selection splits together, and that head is saved (its checkpoint says so)."""
    import time

    from .data import merge_splits
    from .head.sweep import expand, run_sweep, selection_key
    from .progress import Progress

    if report_on and report_on == select_on:
        raise UserError("--report-on must differ from --select-on: a split used for selection is not a report")
    if report_on and report_on == data_spec.split:
        raise UserError("--report-on must differ from the training --split")
    if select_on == data_spec.split:
        raise UserError("--select-on must differ from the training --split: selecting on the training pairs "
                         "picks the configuration that fits them best, not the one that generalises")
    selection_key(select_by)  # a bad value is one line before any work
    check_outputs(data_spec, out)
    t0 = time.perf_counter()
    vs = find_store(cache_dir, enc_spec, base.feature, store,
                    embed_hint=embed_command(data_spec, spec_for_feature(enc_spec, base.feature), cache_dir))
    grids = [grid] if isinstance(grid, dict) else grid
    cfgs = expand(replace(base, feature=base.feature or vs.columns[0]), grids)
    train_data = load_split(data_spec, vs.spec())
    select_spec = replace(data_spec.with_recipe(train_data.recipe), split=select_on)  # the training texts' recipe
    select_data = load_split(select_spec, vs.spec())  # each split read once
    check_distinct(train_data, select_data, "--select-on", "the training --split")
    if report_on:
        report_data = load_split(replace(select_spec, split=report_on), vs.spec())
        check_distinct(train_data, report_data, "--report-on", "the training --split")
        check_distinct(select_data, report_data, "--report-on", "--select-on")
    path = Path(out) if out else sweep_head_path(cache_dir, vs.fp, cfgs, select_on, select_by, refit, train_data)
    check_head_target(path, overwrite, given=out is not None)
    if refit and train_data.kind != select_data.kind:
        raise UserError(f"--refit trains on {data_spec.split} + {select_on} together, but one is {train_data.kind} "
                         f"and the other {select_data.kind} data")
    if train_data.labels is None and any(c.objective == "pointwise" for c in cfgs):
        pairwise_only = [c for c in cfgs if c.objective == "pairwise"]
        if not pairwise_only:
            raise UserError(f"objective=pointwise trains on labelled traces, but split {data_spec.split!r} is "
                             "pairwise (chosen/rejected rows)")
        warnings.warn(f"skipped {len(cfgs) - len(pairwise_only)} pointwise configuration(s): split "
                      f"{data_spec.split!r} is pairwise (no labels to train on)", stacklevel=2)
        cfgs = pairwise_only
    features, select, train_sv = {}, {}, {}
    for f in sorted({c.feature for c in cfgs}):
        tr = split_vectors(train_data, vs, f, embed_command(data_spec, vs.spec() or {}, cache_dir, f))
        se = split_vectors(select_data, vs, f, embed_command(select_spec, vs.spec() or {}, cache_dir, f))
        features[f], select[f], train_sv[f] = (tr.X, tr.ci, tr.ri, labelled_points(tr)), (se.X, se.ci, se.ri), (tr, se)
    with Progress(len(cfgs), "sweep", "config", quiet) as bar:
        rows = run_sweep(features, select, cfgs, progress=bar.update)
    rows.sort(key=selection_key(select_by))
    top = rows[0]
    tr, se = train_sv[top.config.feature]
    best = build_head(vs, tr, top.config, top.result)
    calibrate_and_evaluate(best, se)
    sweep_meta = {"configurations": len(rows), "selected_on": select_on, "selected_by": select_by,
                  "grid": [{k: [str(x) for x in v] for k, v in g.items()} for g in grids]}
    if refit:
        both = split_vectors(merge_splits(tr.data, se.data), vs, top.config.feature)
        selected_metrics = best.meta["metrics"]
        best = build_head(vs, both, top.config, train(both.X, both.ci, both.ri, top.config,
                                                      training_points(both, top.config)))
        sweep_meta["refit"] = {"splits": [data_spec.split, select_on], "pairs": len(both.ci),
                               "selected_metrics_before_refit": selected_metrics,
                               "note": f"retrained on {data_spec.split} + {select_on}: its {select_on} metrics "
                                       "are no longer held out, and it carries no calibration (fit one with "
                                       "eval --calibrate-on <another split> --save-calibration)"}
    best.meta["sweep"] = sweep_meta
    best.save(path)
    report = None
    if report_on:
        report = evaluate_split(path, replace(select_spec, split=report_on), cache_dir,
                                calibrate_on=None if refit else select_on)
    return SweepResult(rows, best, path, time.perf_counter() - t0, report)


def sweep_table(rows, select_on: str) -> list[dict]:
    """One plain dict per configuration (config fields + metrics), best first. Every row has
    every field; one its solver ignores (``lr`` of an lbfgs row, ``l2`` of an adamw row) is None."""
    out = []
    for rank, r in enumerate(rows, 1):
        c = r.config
        fields = c.to_dict() | {"betas": "/".join(map(str, c.betas))}
        d = {"rank": rank, **{k: v if c.uses(k) else None for k, v in fields.items()},
             f"{select_on}_accuracy": r.select_accuracy, f"{select_on}_loss": r.select_loss,
             "train_loss": r.result.final_loss, "train_accuracy": r.result.accuracy, "seconds": r.result.seconds}
        out.append(d)
    return out


def write_sweep_results(rows: list[dict], prefix) -> list[Path]:
    """``prefix``.csv and ``prefix``.json with every row of :func:`sweep_table`, replaced together
    and only once both are complete (strict JSON: a non-finite number is null)."""
    import csv
    import json

    from .outputs import AtomicOutputs, json_safe

    paths = [Path(f"{prefix}.csv"), Path(f"{prefix}.json")]
    with AtomicOutputs() as outputs:
        with open(outputs.path(paths[0]), "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        with open(outputs.path(paths[1]), "w", encoding="utf-8") as f:
            json.dump(json_safe(rows), f, indent=2, allow_nan=False)
    return paths
