"""Answer-aware best-of-N: pick an *answer*, not only a candidate (pure functions, no I/O).

Each candidate of a group (a problem) may carry a final answer. Three aggregations pick one:

* ``best``: the top-scored candidate and its answer (what ``rank`` always did);
* ``vote``: the answer the most candidates give (majority vote; the scores are not used);
* ``weighted-vote``: the answer whose candidates' weights ``exp(score / T)`` sum highest — the
  verifier literature's score-weighted vote (Uesato et al. 2022; Li et al. 2023). ``exp(s / T)``
  is the head's Bradley-Terry strength: with the checkpoint's calibration ``T``, ``σ((s_a - s_b)
  / T) = w_a / (w_a + w_b)`` is the calibrated probability that ``a`` beats ``b``; uncalibrated
  heads take ``T = 1``.

A candidate without an answer (no match of the pattern, an empty answer column) is its own answer,
shared with no one. Weights are relative to the group's top-scored candidate (it weighs 1), so
they never overflow; ``share`` is an answer's weight over the group's total. Answers whose weights
tie (the sums are exact, ``math.fsum``) share the pick: with labels, each gets the same fraction
of the credit (as tied top scores do in :func:`~orm_cache.evaluate.metrics.best_of_n`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation, localcontext

import numpy as np

from ..errors import ConfigError, DataError

AGGREGATES = ("best", "vote", "weighted-vote")
TIE_POLICY = "fractional: credit shared evenly among tied top answers (or tied top candidates for best)"


NUMBER_DIGITS = 60  # longer numbers (or exponents beyond it) are compared as text, never rounded
THOUSANDS = re.compile(r"[+-]?\d{1,3}(,\d{3})+(\.\d*)?")  # 1,000 and 12,345.6 (not 1,2)
PATTERN_SECONDS = 1.0  # a pattern that takes longer than this on one request's (or row's) texts is refused


def normalize_answer(value) -> str | None:
    """An answer as it is compared: surrounding space and a trailing period dropped, inner space
    collapsed; a number (``$``, ``%`` and thousands commas aside) in its exact plain decimal form,
    so ``"1,000"``, ``"$1000.00"`` and ``1000`` are one answer (a number of more than 60 digits,
    or so far from 1 that writing it out would take more, is compared as text). Case is kept.
    None or an empty string: no answer."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):
        return str(value).lower()
    s = " ".join(str(value).split()).rstrip(".").strip()
    if not s:
        return None
    num = s.replace("$", "").rstrip("%").strip()
    if "," in num:
        if not THOUSANDS.fullmatch(num):
            return s
        num = num.replace(",", "")
    try:
        d = Decimal(num)  # exact: construction never rounds
    except InvalidOperation:
        return s
    if not d.is_finite():
        return s
    _, digits, exp = d.as_tuple()
    if len(digits) + abs(exp) > NUMBER_DIGITS:
        return s
    with localcontext() as ctx:
        ctx.prec = NUMBER_DIGITS + 2  # enough for every digit: normalize() drops trailing zeros only
        d = d.normalize()
    return format(d, "f") if d != 0 else "0"


@dataclass(frozen=True)
class AnswerSource:
    """Where each candidate's final answer comes from: a column of its row, or the last non-empty
    match of a regular expression in its response (the named group ``answer``, else the first
    group, else the whole match). The pattern is searched in the response part of the text (from
    where the response starts; the whole text when that is unknown), with the ``regex`` module
    (Python's ``re`` syntax), which can stop a search: one that runs past ``seconds`` is refused
    in one line instead of holding the process."""

    column: str | None = None
    pattern: str | None = None
    seconds: float = PATTERN_SECONDS

    def __post_init__(self):
        if (self.column is None) == (self.pattern is None):
            raise ConfigError("give one of --answer-col and --answer-pattern")
        if self.pattern is not None:
            import regex

            try:
                rx = regex.compile(self.pattern)
            except (regex.error, ValueError) as e:
                raise ConfigError(f"--answer-pattern {self.pattern!r} is not a regular expression: {e}") from None
            object.__setattr__(self, "_rx", rx)

    def describe(self) -> str:
        return f"column {self.column!r}" if self.column is not None else f"the last match of {self.pattern!r}"

    def from_text(self, response: str, seconds: float | None = None) -> str | None:
        """The normalised answer in ``response`` (pattern sources), None when it has none; a
        search longer than ``seconds`` (default: the source's) is a DataError."""
        rx = self._rx
        group = "answer" if "answer" in rx.groupindex else (1 if rx.groups else 0)
        last = None
        try:  # concurrent: the search lets other threads run (a server's event loop)
            for m in rx.finditer(response, concurrent=True, timeout=seconds or self.seconds):
                if m.group(group):
                    last = m
        except TimeoutError:
            raise DataError(f"--answer-pattern {self.pattern!r} took more than {seconds or self.seconds:g} s on "
                            f"one response of {len(response):,} characters; simplify it (anchor it, avoid nested "
                            "or adjacent repeats)") from None
        return None if last is None else normalize_answer(last.group(group))

    def answer(self, row: dict | None, response: str) -> str | None:
        """The normalised answer of one candidate: its row's column, or the pattern's match."""
        if self.column is not None:
            value = (row or {}).get(self.column)
            if isinstance(value, (dict, list)):
                raise DataError(f"answer column {self.column!r} holds a {type(value).__name__}; it must be a "
                                "string or a number")
            return normalize_answer(value)
        return self.from_text(response)


def response_part(text: str, start: int | None) -> str:
    """The response in a built text: from its start offset (the whole text when unknown)."""
    return text if start is None else text[start:]


def check_aggregate(aggregate: str, has_answers: bool) -> None:
    """A ConfigError in one line for an unknown aggregation, or a vote without answers."""
    if aggregate not in AGGREGATES:
        raise ConfigError(f"unknown aggregation {aggregate!r}; one of {', '.join(AGGREGATES)}")
    if aggregate != "best" and not has_answers:
        raise ConfigError(f"aggregate {aggregate!r} votes on final answers: give them (--answer-col COL or "
                          "--answer-pattern REGEX; answers=[…] or answer_pattern=… in Python and over HTTP)")


def require_answers(answers, source: "AnswerSource | str", what: str = "candidates") -> dict:
    """How many candidates have an answer; a DataError in one line when none has (voting would
    silently be best-of-N). ``source``: where the answers came from (or its description)."""
    n = len(answers)
    found = sum(a is not None for a in answers)
    if n and not found:
        how = source if isinstance(source, str) else f"by {source.describe()}"
        raise DataError(f"none of the {n:,} {what} has a final answer {how}; check the pattern (or column) "
                        "against a response, e.g. --answer-pattern '####\\s*(.+)'")
    return {"candidates": n, "with_answer": found, "without_answer": n - found,
            "rule": "a candidate without an answer is its own answer, shared with no one"}


@dataclass
class Pick:
    """One group's pick: the winning answer (None: the top candidate has none, under ``best``),
    its weight (relative to the top-scored candidate's, which is 1; a count under ``vote``) and
    share of the group's weight, how many answers tie for it, and each candidate's rank (1 = best;
    candidates are ordered by their answer's weight, then by score; equal pairs share a rank)."""

    aggregate: str
    answer: str | None
    weight: float
    share: float
    tied: int
    ranks: np.ndarray
    winners: list  # the tied winning answers' codes (internal: for credit)
    codes: np.ndarray  # (n,) each candidate's answer code


def _codes(answers) -> np.ndarray:
    """An int per candidate: equal answers equal codes; a missing answer a code of its own."""
    seen: dict[str, int] = {}
    out = np.empty(len(answers), dtype=np.int64)
    for i, a in enumerate(answers):
        out[i] = seen.setdefault(a, len(seen)) if a is not None else -1 - i
    return out


def weights(scores: np.ndarray, temperature: float | None = None) -> np.ndarray:
    """``exp((s - max s) / T)``: each candidate's strength relative to the group's best (T=1 when None)."""
    s = np.asarray(scores, dtype=np.float64)
    T = temperature or 1.0
    return np.exp((s - s.max()) / T) if len(s) else s


def pick(scores, answers, aggregate: str = "best", temperature: float | None = None) -> Pick:
    """The pick of one group of candidates (``answers``: one normalised answer or None each)."""
    s = np.asarray(scores, dtype=np.float64)
    codes = _codes(answers if answers is not None else [None] * len(s))
    w = weights(s, temperature)
    total = math.fsum(w.tolist())
    if aggregate == "best":
        top = np.flatnonzero(s == s.max())
        first = int(top[0])
        ranks = 1 + (s[None, :] > s[:, None]).sum(axis=1)
        ans = answers[first] if answers is not None else None
        return Pick(aggregate, ans, 1.0, 1.0 / total, len(top), ranks, sorted({int(codes[i]) for i in top}), codes)
    unit = np.ones_like(s) if aggregate == "vote" else w
    per: dict[int, list] = {}
    for c, x in zip(codes.tolist(), unit.tolist()):
        per.setdefault(c, []).append(x)
    mass = {c: math.fsum(v) for c, v in per.items()}
    best = max(mass.values())
    winners = [c for c, m in mass.items() if m == best]
    cand_mass = np.array([mass[c] for c in codes.tolist()])
    # rank by (answer mass, score), best first; equal on both share a rank
    better = (cand_mass[None, :] > cand_mass[:, None]) | ((cand_mass[None, :] == cand_mass[:, None]) & (s[None, :] > s[:, None]))
    ranks = 1 + better.sum(axis=1)
    lead = int(np.flatnonzero(ranks == 1)[0])  # the top-scored candidate of the (first) winning answer
    denom = len(s) if aggregate == "vote" else total
    return Pick(aggregate, answers[lead] if answers is not None else None, float(best), float(best / denom),
                len(winners), ranks, winners, codes)


def credit(p: Pick, labels: np.ndarray, scores: np.ndarray) -> float:
    """The fraction of a correct pick: the mean label of the winning answer's candidates (of the
    tied top candidates under ``best``), averaged over tied winners."""
    y = np.asarray(labels, dtype=np.float64)
    if p.aggregate == "best":
        s = np.asarray(scores, dtype=np.float64)
        return float(y[s == s.max()].mean())
    return float(np.mean([y[p.codes == c].mean() for c in p.winners]))


def group_credits(scores, labels, answers, groups_idx, temperature: float | None = None,
                  rules=AGGREGATES) -> dict[str, np.ndarray]:
    """Per group (``groups_idx``: each group's row indices), the credit of each aggregation of
    ``rules`` and of random (mean label) and oracle (any correct); ``answers`` None: no answers."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    out = {a: np.empty(len(groups_idx)) for a in (*rules, "random", "oracle")}
    for g, idx in enumerate(groups_idx):
        s, y = scores[idx], labels[idx]
        ans = None if answers is None else [answers[i] for i in idx]
        for a in rules:
            out[a][g] = credit(pick(s, ans, a, temperature), y, s)
        out["random"][g], out["oracle"][g] = y.mean(), float(y.max())
    return out


def best_of_n_answers(scores, labels, groups, answers, temperature: float | None = None) -> dict:
    """Best-of-N accuracy of every aggregation beside random and oracle: ``vote`` is the plain
    majority vote (no scores), ``best`` the head's top candidate, ``weighted-vote`` both."""
    from .metrics import group_indices

    idx = group_indices(groups)
    return summarize(group_credits(scores, labels, answers, idx, temperature), idx, answers, temperature)


def best_summary(credits: dict[str, np.ndarray], groups_idx) -> dict:
    """:func:`~orm_cache.evaluate.metrics.best_of_n`'s result (the same keys and values) from
    :func:`group_credits`, so a report that has the credits does not pick every group again."""
    return {"accuracy": float(credits["best"].mean()), "random": float(credits["random"].mean()),
            "oracle": float(credits["oracle"].mean()), "groups": len(groups_idx),
            "mean_candidates": float(np.mean([len(g) for g in groups_idx])), "tie_policy": "fractional"}


def summarize(credits: dict[str, np.ndarray], groups_idx, answers, temperature: float | None) -> dict:
    """:func:`group_credits` as the report gives it: each aggregation's mean credit over groups."""
    distinct = [len({answers[i] for i in g if answers[i] is not None}) for g in groups_idx]
    return {**{a: float(c.mean()) for a, c in credits.items()}, "groups": len(groups_idx),
            "mean_candidates": float(np.mean([len(g) for g in groups_idx])),
            "mean_distinct_answers": float(np.mean(distinct)),
            "temperature": temperature or 1.0,
            "weights": "exp(score / T), T = " + (f"{temperature:.4g} (calibrated)" if temperature
                                                 else "1 (uncalibrated head)"),
            "tie_policy": TIE_POLICY}


def pick_groups(scores, groups, answers=None, aggregate: str = "best",
                temperature: float | None = None) -> tuple[np.ndarray, list[tuple[np.ndarray, Pick]]]:
    """Every group's pick: ``(ranks, [(row indices, Pick), …])``, ranks 1-based within each group
    (``answers`` None: by score alone)."""
    from .metrics import group_indices

    scores = np.asarray(scores, dtype=np.float64)
    ranks = np.empty(len(scores), dtype=np.int64)
    picks = []
    for idx in group_indices(groups):
        p = pick(scores[idx], None if answers is None else [answers[i] for i in idx], aggregate, temperature)
        ranks[idx] = p.ranks
        picks.append((idx, p))
    return ranks, picks


def best_of_n_by(group_values: list, credits: dict[str, np.ndarray]) -> list[dict]:
    """Best-of-N per value of a column that is constant within each group (``group_values``: one
    value per group, in the order of ``credits``' arrays), largest first."""
    order: dict = {}
    for g, v in enumerate(group_values):
        order.setdefault(v, []).append(g)
    rows = [{"value": v, "groups": len(gs), **{a: float(c[gs].mean()) for a, c in credits.items()}}
            for v, gs in order.items()]
    return sorted(rows, key=lambda r: (-r["groups"], r["value"]))


def group_values(values: list, groups_idx) -> list | None:
    """Each group's value of a per-row column, or None when some group's rows disagree (then no
    best-of-N per value: a pick is a group's, a value a row's)."""
    out = []
    for idx in groups_idx:
        first = values[idx[0]]
        if any(values[i] != first for i in idx[1:]):
            return None
        out.append(first)
    return out


def candidate_answers(built: list[tuple[str, int | None]], answers=None, pattern: str | None = None,
                      seconds: float = PATTERN_SECONDS) -> list | None:
    """The normalised answers of one group's candidates (``built``: each one's text and response
    start): given (``answers``, one per candidate), found by ``pattern`` in each response, or None
    (neither). A DataError when the count is wrong, no candidate has one, or the pattern's
    searches together take more than ``seconds`` (a server's request cannot hold it longer)."""
    import time

    if answers is not None and pattern is not None:
        raise ConfigError("give answers or answer_pattern, not both")
    if pattern is not None:
        source = AnswerSource(pattern=pattern)
        deadline = time.monotonic() + seconds
        found = []
        for t, s in built:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DataError(f"the answer pattern {pattern!r} took more than {seconds:g} s on these "
                                f"{len(built):,} candidates; simplify it")
            found.append(source.from_text(response_part(t, s), left))
        how = f"by {source.describe()}"
    elif answers is not None:
        if isinstance(answers, (str, bytes)) or len(answers) != len(built):
            raise DataError(f"answers must be a list with one answer (or null) per candidate: {len(built)}")
        if any(isinstance(a, (dict, list)) for a in answers):
            raise DataError("each answer must be a string, a number or null")
        found = [normalize_answer(a) for a in answers]
        how = "among the answers given (all null or empty)"
    else:
        return None
    require_answers(found, how)
    return found


def ranking(scores, answers=None, aggregate: str = "best", temperature: float | None = None) -> dict:
    """One group's ranking as the Python and HTTP doors return it: ``order`` (candidate indices,
    best first; equal ranks keep input order), ``scores``, ``best`` (the first of ``order``) and,
    with answers, the pick (``answer``, ``weight``, ``share``, ``tied``) and each candidate's
    ``answers``; ``aggregate`` and ``temperature`` say how it was picked."""
    check_aggregate(aggregate, answers is not None)
    s = np.asarray(scores, dtype=np.float64)
    if not len(s):
        return {"order": [], "scores": [], "best": None, "aggregate": aggregate, "temperature": temperature or 1.0}
    p = pick(s, answers, aggregate, temperature)
    order = np.lexsort((np.arange(len(s)), p.ranks))
    out = {"order": order.tolist(), "scores": s.tolist(), "best": int(order[0]), "aggregate": aggregate,
           "temperature": temperature or 1.0}
    if answers is not None:
        out.update(answer=p.answer, weight=p.weight, share=p.share, tied=p.tied, answers=list(answers))
    return out
