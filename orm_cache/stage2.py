"""Stage 2 entry points: fit a head and evaluate it, from cached vectors only (no model import).

The CLI calls these; so can a notebook.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

from .config import DataSpec, EncoderSpec, HeadConfig
from .data import DataError, load_split
from .evaluate import evaluate
from .evaluate.metrics import fit_temperature
from .evaluate.report import margins_of
from .head import Head, train
from .store import StoreError, VectorStore, find_store, short, store_dir
from .store.resolve import store_by_prefix
from .vectors import embed_command, split_vectors

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    head: Head
    path: Path
    train_result: object
    eval_report: dict | None


def default_head_path(cache_dir, fp: str, feature: str, cfg: HeadConfig) -> Path:
    return Path(cache_dir) / "heads" / f"{short(fp)[:8]}-{feature.replace('@', '')}-{cfg.solver}-seed{cfg.seed}.pt"


def store_for_head(head: Head, cache_dir, store: str | None = None) -> VectorStore:
    """The store a head was trained on (by its fingerprint), or ``--store`` for an imported head."""
    if head.fingerprint:
        d = store_dir(cache_dir, head.fingerprint)
        if not d.is_dir():
            raise StoreError(f"no vectors of the head's encoder {short(head.fingerprint)} under {cache_dir}; "
                             "embed the split with that encoder first (see the head's encoder_spec)")
        vs = VectorStore(d, head.fingerprint)
    else:
        if not store:
            raise StoreError("this head carries no encoder fingerprint (a reference-format import); "
                             "name the store of its encoder with --store FINGERPRINT")
        vs = store_by_prefix(cache_dir, store)
    head.check_store(vs)
    return vs


def load_vectors(data_spec: DataSpec, store: VectorStore, feature: str | None, model_hint: str, cache_dir):
    data = load_split(data_spec)
    return split_vectors(data, store, feature, embed_command(data_spec, model_hint, cache_dir, feature))


def _model_hint(store: VectorStore, fallback: str = "MODEL") -> str:
    spec = store.spec() or {}
    return spec.get("model", fallback)


def fit_head(data_spec: DataSpec, enc_spec: EncoderSpec, cfg: HeadConfig, cache_dir="cache",
             out: str | Path | None = None, eval_split: str | None = "validation",
             store: str | None = None) -> FitResult:
    """Train a head on ``data_spec``'s pairs; evaluate on ``eval_split`` when it is cached (and fit
    the calibration temperature there); save the checkpoint."""
    vs = find_store(cache_dir, enc_spec, cfg.feature, store,
                    embed_hint=embed_command(data_spec, enc_spec.model, cache_dir, cfg.feature))
    sv = load_vectors(data_spec, vs, cfg.feature, enc_spec.model, cache_dir)
    feature = sv.feature
    if cfg.feature is None:
        cfg = replace(cfg, feature=feature)
    res = train(sv.X, sv.ci, sv.ri, cfg)
    head = build_head(vs, sv, cfg, res)
    report = None
    if eval_split:
        try:
            ev = load_vectors(replace(data_spec, split=eval_split), vs, feature, enc_spec.model, cache_dir)
        except (DataError, StoreError) as e:
            log.info("not evaluating on %s: %s", eval_split, e)
        else:
            report = calibrate_and_evaluate(head, ev)
    path = Path(out) if out else default_head_path(cache_dir, vs.fp, feature, cfg)
    head.save(path)
    return FitResult(head, path, res, report)


def build_head(vs: VectorStore, sv, cfg: HeadConfig, res) -> Head:
    """A head from a training result, with everything a checkpoint records beside the weights."""
    train_acc = float((margins_of(sv.X @ res.weight, sv.ci, sv.ri) > 0).mean())
    meta = {
        "fingerprint": vs.fp, "encoder_identity": vs.identity(), "encoder_spec": vs.spec(), "feature": sv.feature,
        "config": cfg.to_dict(), "data": sv.data.identity,
        "train": {"score_mean": 0.0, "score_std": res.score_std, "final_loss": res.final_loss,
                  "accuracy": train_acc, "seconds": res.seconds, "steps": res.steps,
                  "history": [list(h) for h in res.history],
                  "bias_rule": "bias set after training so that training traces score 0 on average"},
    }
    return Head(res.weight, res.bias, meta)


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
                   store: str | None = None, feature: str | None = None, save_calibration: bool = True) -> dict:
    """The full metric table of a head on one split. The temperature is fitted on ``calibrate_on``
    (when cached) and saved into the checkpoint; without it, on the split itself (and said so)."""
    head = Head.load(head_path)
    vs = store_for_head(head, cache_dir, store)
    feature = feature or head.feature
    hint = _model_hint(vs)
    sv = load_vectors(data_spec, vs, feature, hint, cache_dir)
    T, fitted_on = None, None
    if calibrate_on:
        cal = sv if calibrate_on == data_spec.split else None
        if cal is None:
            try:
                cal = load_vectors(replace(data_spec, split=calibrate_on), vs, feature, hint, cache_dir)
            except (DataError, StoreError) as e:
                log.warning("calibration split %s unavailable (%s); fitting T on %s itself",
                            calibrate_on, e, data_spec.split)
        if cal is not None:
            T = calibrate(head, cal)
            fitted_on = calibrate_on
            if save_calibration and math.isfinite(T):
                head.save(head_path)
    report = evaluate(head, sv, bootstrap, ci_level, seed, length_edges, temperature=T)
    if fitted_on:
        report["calibration"]["fitted_on"] = fitted_on
    report["head"] = str(head_path)
    report["fingerprint"] = vs.fp
    return report


def verify_head(head_path, data_spec: DataSpec, cache_dir="cache", sample: int = 64, seed: int = 0,
                atol: float | None = None, device: str = "auto", batch_tokens: int | None = None):
    """Cached vs live scores for a seeded sample of ``data_spec``'s pairs (loads the encoder)."""
    from .evaluate.verify import verify
    from .live import LiveScorer

    head = Head.load(head_path)
    vs = store_for_head(head, cache_dir)
    sv = load_vectors(data_spec, vs, head.feature, _model_hint(vs), cache_dir)
    scorer = LiveScorer(head, device, batch_tokens)
    return verify(head, sv, scorer, sample, seed, atol)


@dataclass
class SweepResult:
    rows: list  # SweepRow, sorted best first
    best: Head
    path: Path
    seconds: float
    report: dict | None  # --report-on split, best head only


def sweep_heads(data_spec: DataSpec, enc_spec: EncoderSpec, base: HeadConfig, grid: dict | list[dict],
                cache_dir="cache", select_on: str = "validation", report_on: str | None = None, out=None,
                store: str | None = None, quiet: bool = True) -> SweepResult:
    """Train every distinct configuration of ``grid`` (one field -> values mapping, or a list of
    sub-grids; on top of ``base``) on ``data_spec``'s split, rank them on ``select_on``, save the
    best; evaluate only that one on ``report_on`` (never selecting on it)."""
    import sys
    import time

    from tqdm.auto import tqdm

    from .head.sweep import expand, run_sweep

    if report_on and report_on == select_on:
        raise ValueError("--report-on must differ from --select-on: a split used for selection is not a report")
    t0 = time.perf_counter()
    hint = embed_command(data_spec, enc_spec.model, cache_dir, base.feature)
    vs = find_store(cache_dir, enc_spec, base.feature, store, embed_hint=hint)
    grids = [grid] if isinstance(grid, dict) else grid
    cfgs = expand(replace(base, feature=base.feature or vs.columns[0]), grids)
    select_spec = replace(data_spec, split=select_on)
    train_data, select_data = load_split(data_spec), load_split(select_spec)  # each file read once
    features, select, train_sv = {}, {}, {}
    for f in sorted({c.feature for c in cfgs}):
        tr = split_vectors(train_data, vs, f, embed_command(data_spec, enc_spec.model, cache_dir, f))
        se = split_vectors(select_data, vs, f, embed_command(select_spec, enc_spec.model, cache_dir, f))
        features[f], select[f], train_sv[f] = (tr.X, tr.ci, tr.ri), (se.X, se.ci, se.ri), (tr, se)
    bar = tqdm(total=len(cfgs), unit="config", desc="sweep", disable=quiet or not sys.stderr.isatty(), file=sys.stderr)
    rows = run_sweep(features, select, cfgs, progress=bar.update)
    bar.close()
    rows.sort(key=lambda r: (-r.select_accuracy, r.select_loss))
    top = rows[0]
    tr, se = train_sv[top.config.feature]
    best = build_head(vs, tr, top.config, top.result)
    calibrate_and_evaluate(best, se)
    best.meta["sweep"] = {"configurations": len(rows), "selected_on": select_on,
                          "grid": [{k: [str(x) for x in v] for k, v in g.items()} for g in grids]}
    path = Path(out) if out else Path(cache_dir) / "heads" / f"sweep-best-{short(vs.fp)[:8]}.pt"
    best.save(path)
    report = None
    if report_on:
        report = evaluate_split(path, replace(data_spec, split=report_on), cache_dir, calibrate_on=select_on)
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
             "train_loss": r.result.final_loss, "seconds": r.result.seconds}
        out.append(d)
    return out
