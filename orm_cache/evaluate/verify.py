"""verify: cached scores equal live end-to-end scores, within a stated tolerance.

A seeded sample of a split's pairs is re-scored live twice — one text at a time (as the
reference card's ``score_trace`` does) and in stage 1's padded batches — and compared with the
scores from cached vectors. The default tolerance is relative to the head's training score std:
1e-4 × std for float32 encoders, 2e-2 × std for float16/bfloat16 (where batch composition changes
rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_RTOL = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 2e-2}


@dataclass
class VerifyResult:
    report: dict
    ok: bool


def _compare(cached_v, live_v, head, n_tokens, keys, atol):
    cs, ls = head.score(cached_v), head.score(live_v)
    d = np.abs(cs.astype(np.float64) - ls)
    cos = (cached_v * live_v).sum(1) / (np.linalg.norm(cached_v, axis=1) * np.linalg.norm(live_v, axis=1) + 1e-30)
    worst = np.argsort(-d)[:5]
    return cs, ls, {
        "max_abs_diff": float(d.max()), "mean_abs_diff": float(d.mean()),
        "max_rel_to_score_std": float(d.max() / (head.score_std or 1.0)),
        "min_cosine": float(cos.min()),
        "over_tolerance": int((d > atol).sum()),
        "worst": [{"key": keys[i], "n_tokens": int(n_tokens[i]), "abs_diff": float(d[i]),
                   "pooled_position": int(n_tokens[i]) - 1} for i in worst if d[i] > atol],
    }


def verify(head, sv, scorer, sample: int = 64, seed: int = 0, atol: float | None = None) -> VerifyResult:
    """Compare cached and live scores on ``sample`` pairs of ``sv`` (a :class:`SplitVectors`)."""
    rng = np.random.default_rng(seed)
    n_pairs = len(sv.ci)
    pick = np.sort(rng.choice(n_pairs, size=min(sample, n_pairs), replace=False))
    rows = np.unique(np.concatenate([sv.ci[pick], sv.ri[pick]]))
    keys = [sv.keys[i] for i in rows]
    texts = [sv.data.texts[k] for k in keys]
    starts = [sv.data.response_starts.get(k, 0) for k in keys]  # where response_mean pools from
    cached = sv.X[rows]
    dtype = scorer.encoder.identity["dtype"]
    if atol is None:
        atol = DEFAULT_RTOL[dtype] * (head.score_std or 1.0)
    pos = {r: i for i, r in enumerate(rows)}
    pc, pr = np.array([pos[i] for i in sv.ci[pick]]), np.array([pos[i] for i in sv.ri[pick]])
    report = {"split": sv.data.split, "pairs": int(len(pick)), "traces": len(rows), "dtype": dtype,
              "device": scorer.encoder.device, "atol": atol, "feature": sv.feature}
    ok = True
    for mode, alone in (("one_at_a_time", True), ("batched", False)):
        live, n_tok = scorer.vectors(texts, one_at_a_time=alone, starts=starts, special_tokens=sv.data.special_tokens)
        cs, ls, r = _compare(cached, live, head, n_tok, keys, atol)
        r["preference_flips"] = float(np.mean((cs[pc] > cs[pr]) != (ls[pc] > ls[pr])))
        report[mode] = r
        ok = ok and r["over_tolerance"] == 0
    report["ok"] = ok
    return VerifyResult(report, ok)


def format_verify(r: dict) -> str:
    lines = [f"verify {r['split']}: {r['pairs']} pairs, {r['traces']} traces, {r['dtype']} on {r['device']}, "
             f"feature {r['feature']}, tolerance |Δscore| <= {r['atol']:.3g}"]
    for mode in ("one_at_a_time", "batched"):
        m = r[mode]
        lines.append(f"  {mode.replace('_', ' '):>14}: max |Δscore| {m['max_abs_diff']:.3g} (mean {m['mean_abs_diff']:.3g}, "
                     f"{m['max_rel_to_score_std']:.3g} × score std), min cosine {m['min_cosine']:.8f}, "
                     f"preference flips {100 * m['preference_flips']:.1f}%")
        for w in m["worst"]:
            lines.append(f"      disagrees: key {w['key'][:16]}… n_tokens {w['n_tokens']} pooled position "
                         f"{w['pooled_position']} |Δ| {w['abs_diff']:.3g}")
    lines.append("  OK: cached scores equal live scores" if r["ok"] else "  FAILED: cached and live scores differ")
    return "\n".join(lines)
