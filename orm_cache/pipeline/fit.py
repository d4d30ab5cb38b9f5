"""Use cases ``fit-head`` and ``sweep``: train heads on cached vectors (no model import), evaluate
and calibrate them on a held-out split, and save the checkpoint with everything it records."""

from __future__ import annotations

import hashlib
import re
import logging
import warnings

import numpy as np
from dataclasses import dataclass, replace
from pathlib import Path

from ..data.spec import DataSpec
from ..encode.spec import EncoderSpec
from ..head.config import HeadConfig
from ..data import DataError, load_split
from ..errors import UserError
from ..evaluate.report import margins_of
from ..head import Head, train
from ..store import StoreError, VectorStore, short
from .vectors import embed_command, split_vectors
from .evaluate import calibrate_and_evaluate, evaluate_split
from .bind import check_distinct, check_head_target, check_outputs, encoder_store_for, load_vectors
from .joined import canonical, encoders_record, other_columns, primary_feature, stores_for_features

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    head: Head
    path: Path
    train_result: object
    eval_report: dict | None


def default_head_path(cache_dir, fp: str, feature: str, cfg: HeadConfig, data: dict | None = None) -> Path:
    """``cache/heads/<fingerprint>-<feature>-<kind>[xK]-<objective>-<solver>-seed<seed>-<digest>.pt``:
    the digest covers every field of the effective configuration and the training pairs, so two
    heads that differ in anything (head kind, objective, ensemble, lr, data) never share a name."""
    from ..store.fingerprint import canonical_json

    what = {"config": replace(cfg, feature=feature).effective().to_dict(),
            "data": (data or {}).get("pairs_sha256")}
    digest = hashlib.sha256(canonical_json(what).encode()).hexdigest()[:8]
    kind = cfg.head + (f"x{cfg.ensemble}" if cfg.ensemble > 1 else "")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", feature.replace("@", "").replace("+", "_"))[-80:]  # another model's path too
    return Path(cache_dir) / "heads" / (f"{short(fp)[:8]}-{name}-{kind}-"
                                        f"{cfg.objective}-{cfg.solver}-seed{cfg.seed}-{digest}.pt")


def sweep_head_path(cache_dir, fp: str, cfgs, select_on: str, select_by: str, refit: bool, data) -> Path:
    """``cache/heads/sweep-best-<fingerprint>-<digest>.pt``; the digest covers the configurations,
    the selection rule and the training pairs."""
    from ..store.fingerprint import canonical_json

    what = {"configs": sorted(canonical_json(c.effective().to_dict()) for c in cfgs), "select_on": select_on,
            "select_by": select_by, "refit": refit, "data": data.identity["pairs_sha256"]}
    digest = hashlib.sha256(canonical_json(what).encode()).hexdigest()[:8]
    return Path(cache_dir) / "heads" / f"sweep-best-{short(fp)[:8]}-{digest}.pt"


WHOLE_TRACES = {"train_on": "traces", "step_prefixes": False}  # how a head trained on prefixes is evaluated


def whole_traces(data_spec: DataSpec, data, vs):
    """The training split as whole traces (itself unless it was read as prefixes): what a split
    evaluated or selected on must not be."""
    return data if data_spec.train_on == "traces" else load_split(
        replace(data_spec.with_recipe(data.recipe), **WHOLE_TRACES), vs.spec())


def fit_head(data_spec: DataSpec, enc_spec: EncoderSpec, cfg: HeadConfig, cache_dir="cache",
             out: str | Path | None = None, eval_split: str | None = "validation",
             store: str | None = None, overwrite: bool = False) -> FitResult:
    """Train a head on ``data_spec``'s pairs; evaluate on ``eval_split`` when it is cached (and fit
    the calibration temperature there); save the checkpoint (an existing one at the default path
    only with ``overwrite``)."""
    check_outputs(data_spec, out)
    cfg = replace(cfg, feature=canonical(cfg.feature))
    vs = stores_for_features(cache_dir, enc_spec, [cfg.feature],
                             encoder_store_for(data_spec, enc_spec, cache_dir, primary_feature(cfg.feature), store))
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
            ev = load_vectors(replace(data_spec.with_recipe(sv.data.recipe), split=eval_split, **WHOLE_TRACES), vs,
                              feature, cache_dir)
        except (DataError, StoreError) as e:
            log.info("not evaluating on %s: %s", eval_split, e)
        else:
            traces = whole_traces(data_spec, sv.data, vs)
            if ev.data.identity["pairs_sha256"] == traces.identity["pairs_sha256"] or ev.data.texts.keys() == \
                    traces.texts.keys():
                log.warning("not evaluating on %s: its pairs are the training pairs (a single file or Dataset "
                            "without a split column is used whole for every --split)", eval_split)
            else:
                report = calibrate_and_evaluate(head, ev)
    head.save(path)
    return FitResult(head, path, res, report)


def labelled_points(sv):
    """A pointwise split's labelled traces as rows of its ``X`` (None for a pairwise split)."""
    from ..head.train import Points

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
    from ..head.train import check_trained

    check_trained(res, sv.X)
    train_acc = res.accuracy if res.accuracy is not None else float((margins_of(res.head.score(sv.X), sv.ci, sv.ri) > 0).mean())
    meta = {
        "fingerprint": vs.fp, "encoder_identity": vs.identity(), "encoder_spec": vs.spec(), "feature": sv.feature,
        **({"encoders": encoders_record(vs, sv.feature)} if other_columns(sv.feature) else {}),
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

    from ..data import merge_splits
    from ..head.sweep import expand, run_sweep, selection_key
    from ..progress import Progress

    if report_on and report_on == select_on:
        raise UserError("--report-on must differ from --select-on: a split used for selection is not a report")
    if report_on and report_on == data_spec.split:
        raise UserError("--report-on must differ from the training --split")
    if select_on == data_spec.split:
        raise UserError("--select-on must differ from the training --split: selecting on the training pairs "
                         "picks the configuration that fits them best, not the one that generalises")
    selection_key(select_by)  # a bad value is one line before any work
    if refit and data_spec.train_on == "prefixes":
        raise UserError("--refit with --train-on prefixes is not supported: the selection split holds whole traces, "
                        "the training split prefixes")
    check_outputs(data_spec, out)
    t0 = time.perf_counter()
    grids = [grid] if isinstance(grid, dict) else grid
    vs = encoder_store_for(data_spec, enc_spec, cache_dir, primary_feature(canonical(base.feature)), store)
    cfgs = [replace(c, feature=canonical(c.feature)) for c in expand(replace(base, feature=base.feature or vs.columns[0]), grids)]
    vs = stores_for_features(cache_dir, enc_spec, {c.feature for c in cfgs}, vs)
    train_data = load_split(data_spec, vs.spec())
    # the training texts' recipe; selected (and reported) on whole traces, whatever the training points were
    select_spec = replace(data_spec.with_recipe(train_data.recipe), split=select_on, **WHOLE_TRACES)
    select_data = load_split(select_spec, vs.spec())  # each split read once
    train_traces = whole_traces(data_spec, train_data, vs)  # what selection must not see again
    check_distinct(train_traces, select_data, "--select-on", "the training --split")
    if report_on:
        report_data = load_split(replace(select_spec, split=report_on), vs.spec())
        check_distinct(train_traces, report_data, "--report-on", "the training --split")
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

    from ..outputs import AtomicOutputs, json_safe

    paths = [Path(f"{prefix}.csv"), Path(f"{prefix}.json")]
    with AtomicOutputs() as outputs:
        with open(outputs.path(paths[0]), "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        with open(outputs.path(paths[1]), "w", encoding="utf-8") as f:
            json.dump(json_safe(rows), f, indent=2, allow_nan=False)
    return paths
