"""``eval --by COLUMN``: the headline metrics per value of a metadata column.

Pairwise data: a pair's value is its row's value of the column. Pointwise data (pairs built from
traces): a pair's value is its two traces' values, ``chosen=<v> / rejected=<v>``, and the
pointwise metrics are also given per trace value. Values are compared as JSON-ish strings (a
string as itself, numbers and booleans as JSON writes them, lists and dicts as compact JSON);
an absent or null value (or NaN) is ``(missing)``.
"""

from __future__ import annotations

import json
import math

import numpy as np

from ..data import DataError
from . import metrics as M

MISSING = "(missing)"
MAX_CI_GROUPS = 1000  # bootstrap CIs for this many of the largest values (an id column has ~one per pair)


def value_label(v) -> str:
    """A metadata value as the string it is grouped by."""
    if v is None:
        return MISSING
    if hasattr(v, "tolist"):  # NumPy scalars and arrays (Parquet lists)
        v = v.tolist()
    if isinstance(v, float) and math.isnan(v):
        return MISSING
    if isinstance(v, str):
        return v
    try:
        return json.dumps(v, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(v)


def metadata_columns(data) -> list[str]:
    """The columns ``--by`` can name: a pairwise split's per-pair metadata columns, a pointwise
    split's per-trace ones (not the text, label, prompt or group columns)."""
    if data.kind == "pointwise":
        return list(data.trace_columns)
    seen: dict[str, None] = {}
    for m in data.pairs.meta:
        seen.update(dict.fromkeys(m or ()))
    return list(seen)


def check_columns(data, columns, group_col: str = "group") -> None:
    """A DataError in one line for a column that no row of ``data`` has (naming the ones that
    exist), or a pointwise column that was not kept when the split was loaded; the group column
    is the problem id, which eval uses already, and is explained as such."""
    have = metadata_columns(data)
    for c in columns:
        if c == group_col and c not in have:
            raise DataError(f"--by {c}: {c!r} is the group column, the problem id each candidate answers "
                            "(--group-col): eval already uses it for best-of-N (one pick per problem) and resamples "
                            "whole problems for its confidence intervals; a table per problem id is rank's job "
                            "(orm-cache rank --group-by " + c + "); --by takes a metadata column"
                            + (f" ({', '.join(have)})" if have else ""))
        if c not in have:
            listed = ", ".join(have) if have else "none (only text, label, prompt and group columns)"
            raise DataError(f"--by {c}: no row of split {data.split!r} has column {c!r}; "
                            f"its metadata columns: {listed}")
        if data.kind == "pointwise" and c not in data.trace_meta:
            raise DataError(f"--by {c}: the column was not kept when split {data.split!r} was loaded; load it "
                            f"with DataSpec(keep_columns=({c!r},))")


def by_column(data, column: str, margins: np.ndarray, row_scores: np.ndarray | None = None,
              n_boot: int = 1000, ci: float = 0.9, seed: int = 0, credits: dict | None = None,
              groups_idx=None) -> dict:
    """The metrics of one ``--by`` column: ``pairs`` per pair value (all of them, largest first)
    and, for pointwise data, ``traces`` per trace value (``row_scores``: one score per row) and,
    when the value is the same for every trace of a group, ``best_of_n`` per value (``credits``:
    each best-of-N rule's credit per group of ``groups_idx``, :func:`.vote.group_credits`)."""
    check_columns(data, [column])
    pairs = data.pairs
    out = {"column": column}
    if data.kind == "pointwise":
        trace = [value_label(v) for v in data.trace_meta[column]]  # (rows,)
        sides = [(trace[m["chosen_row"]], trace[m["rejected_row"]]) for m in pairs.meta]  # (N,)
        labels = [f"chosen={c} / rejected={r}" for c, r in sides]
        out["pair_value"] = "chosen=<chosen trace's value> / rejected=<rejected trace's value>"
    else:
        meta = pairs.meta or [{}] * len(pairs)
        labels = [value_label((m or {}).get(column)) for m in meta]
        out["pair_value"] = "the pair's row's value"
    out["pairs"] = M.pairwise_by(margins, labels, pairs.group, n_boot, ci, seed, MAX_CI_GROUPS)
    if data.kind == "pointwise":
        side = dict(zip(labels, sides))
        for g in out["pairs"]:
            g["chosen"], g["rejected"] = side[g["value"]]
        if row_scores is not None:
            out["traces"] = M.pointwise_by(row_scores, data.labels, trace)
        if credits is not None:
            from .vote import best_of_n_by, group_values

            per_group = group_values(trace, groups_idx)
            if per_group is None:
                out["best_of_n_note"] = "the value differs within a group, so best-of-N (a group's pick) has none"
            else:
                out["best_of_n"] = best_of_n_by(per_group, credits)
    beyond = len(out["pairs"]) - MAX_CI_GROUPS
    if beyond > 0:
        out["ci_note"] = f"bootstrap CI computed for the {MAX_CI_GROUPS:,} largest values; null for the other {beyond:,}"
    return out


def _one_line(label: str) -> str:
    return label.replace("\n", "\\n").replace("\t", "\\t")


def _cell(label: str, width: int) -> str:
    label = _one_line(label)
    return label if len(label) <= width else label[:width - 1] + "…"


def format_by(b: dict, max_groups: int = 50) -> list[str]:
    """Table lines for one :func:`by_column` result: at most ``max_groups`` values each (the
    largest), the rest summarised in one line."""
    pct = lambda x: "     -" if x is None else f"{100 * x:5.1f}%"  # noqa: E731
    rows = b["pairs"]
    shown = rows[:max_groups]
    w = min(48, max([len("value")] + [len(_one_line(g["value"])) for g in shown]))
    level = next((g["ci"]["level"] for g in rows if g["ci"]), None)
    ci_head = f"{int(round(100 * level))}% CI" if level else "CI"
    lines = [f"  by {b['column']} (pairs; value: {b['pair_value']}):",
             f"    {'value':<{w}}  {'pairs':>7}  {'accuracy':>8}  {ci_head:<16}  {'ties':>6}  {'mean margin':>11}"]
    for g in shown:
        c = g["ci"]
        ci_txt = f"[{pct(c['low']).strip()}, {pct(c['high']).strip()}]" if c else "-"
        lines.append(f"    {_cell(g['value'], w):<{w}}  {g['pairs']:>7,}  {pct(g['accuracy']):>8}  {ci_txt:<16}  "
                     f"{pct(g['tie_rate']):>6}  {g['margin_mean']:>11.4f}")
    if len(rows) > max_groups:
        rest = rows[max_groups:]
        lines.append(f"    … {len(rest):,} more values ({sum(g['pairs'] for g in rest):,} pairs), all in --json")
    if "traces" in b:
        traces = b["traces"]
        shown = traces[:max_groups]
        w = min(48, max([len("value")] + [len(_one_line(g["value"])) for g in shown]))
        lines.append(f"  by {b['column']} (traces):")
        lines.append(f"    {'value':<{w}}  {'traces':>7}  {'correct':>7}  {'AUROC':>6}")
        for g in shown:
            auroc = "     -" if g["auroc"] is None else f"{g['auroc']:.4f}"
            lines.append(f"    {_cell(g['value'], w):<{w}}  {g['traces']:>7,}  {g['correct']:>7,}  {auroc:>6}")
        if len(traces) > max_groups:
            rest = traces[max_groups:]
            lines.append(f"    … {len(rest):,} more values ({sum(g['traces'] for g in rest):,} traces), all in --json")
    if "best_of_n_note" in b:
        lines.append(f"  by {b['column']} (best-of-N): none; {b['best_of_n_note']}")
    if "best_of_n" in b:
        rules = [k for k in ("best", "vote", "weighted-vote", "random", "oracle") if k in b["best_of_n"][0]]
        shown = b["best_of_n"][:max_groups]
        w = min(48, max([len("value")] + [len(_one_line(g["value"])) for g in shown]))
        lines.append(f"  by {b['column']} (best-of-N, the value of every trace of a group):")
        lines.append(f"    {'value':<{w}}  {'groups':>7}  " + "  ".join(f"{k:>13}" for k in rules))
        for g in shown:
            lines.append(f"    {_cell(g['value'], w):<{w}}  {g['groups']:>7,}  "
                         + "  ".join(f"{pct(g[k]):>13}" for k in rules))
        if len(b["best_of_n"]) > max_groups:
            lines.append(f"    … {len(b['best_of_n']) - max_groups:,} more values, all in --json")
    return lines
