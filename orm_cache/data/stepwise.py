"""Rows that label each step of a trace (process supervision), read like the other shapes:

* TRL's stepwise-supervision shape, ``prompt``, ``completions`` (the steps) and ``labels`` (one
  bool per step): how TRL publishes PRM800K (``trl-lib/prm800k``) and Math-Shepherd
  (``trl-lib/math_shepherd``);
* Math-Shepherd as released (``peiyi9979/Math-Shepherd``): ``input`` is the question and the
  solution with the tag ``ки`` after each step, ``label`` the same text with ``+`` (correct) or
  ``-`` in place of each tag; the question is what comes before ``Step 1:``.

Either way the row's one text is its steps joined by a newline (as TRL's PRM trainer joins them)
after its prompt, by the recipe, and each step's prefix (:mod:`orm_cache.text.steps`) is one
labelled point.
"""

from __future__ import annotations

from ..errors import DataError

COMPLETIONS, LABELS = "completions", "labels"  # TRL's stepwise-supervision shape
SHEPHERD_INPUT, SHEPHERD_LABEL, SHEPHERD_TAG = "input", "label", "ки"  # Math-Shepherd as released
STEP_SEPARATOR = "\n"  # how TRL's PRM trainer joins a row's steps


def is_stepwise(row: dict) -> bool:
    """Whether a row has TRL's stepwise columns or Math-Shepherd's tagged ones (an ``input`` with
    tags and a string ``label``, not a 0/1 one)."""
    label = row.get(SHEPHERD_LABEL)
    return (COMPLETIONS in row and LABELS in row) or (
        isinstance(row.get(SHEPHERD_INPUT), str) and SHEPHERD_TAG in row[SHEPHERD_INPUT] and isinstance(label, str)
        and label.strip().lower() not in ("0", "1", "true", "false"))


def math_shepherd(row: dict, where: str) -> tuple[str | None, list[str], list[bool]]:
    """``(question, steps, labels)`` of a Math-Shepherd row; a row whose label text is not its input
    with each tag replaced by + or - is refused in one line."""
    text, marked = row[SHEPHERD_INPUT], row.get(SHEPHERD_LABEL)
    if not isinstance(marked, str):
        raise DataError(f"{where}: column {SHEPHERD_LABEL!r} must be the input with + or - in place of each "
                        f"{SHEPHERD_TAG!r}, got {type(marked).__name__}")
    parts = text.split(SHEPHERD_TAG)
    labels, pos = [], 0
    for i, part in enumerate(parts[:-1]):
        pos += len(part)
        mark = marked[pos - i:pos - i + 1]  # each earlier tag (two characters) became one
        if mark not in ("+", "-") or marked[pos - i - len(part):pos - i] != part:
            raise DataError(f"{where}: column {SHEPHERD_LABEL!r} does not match column {SHEPHERD_INPUT!r} with + or - "
                            f"in place of tag {i} ({SHEPHERD_TAG!r})")
        labels.append(mark == "+")
        pos += len(SHEPHERD_TAG)
    if parts[-1].strip():
        raise DataError(f"{where}: column {SHEPHERD_INPUT!r} has text after its last {SHEPHERD_TAG!r} tag "
                        "(a step without a label)")
    first = parts[0].find("Step 1:")
    question = parts[0][:first].strip() or None if first > 0 else None
    if first > 0:
        parts[0] = parts[0][first:]
    return question, [p.strip() for p in parts[:-1]], labels


def stepwise_fields(row: dict, where: str) -> tuple[str, object, list, object, set]:
    """``(column, prompt, steps, labels, columns read)`` of a stepwise row; ``prompt`` is
    :data:`ROW_PROMPT` for TRL's shape (the recipe's prompt column holds it). A row of another
    shape, in a split whose first row is stepwise, is refused in one line."""
    if COMPLETIONS in row and LABELS in row:
        return COMPLETIONS, ROW_PROMPT, row[COMPLETIONS], row[LABELS], {COMPLETIONS, LABELS}
    if is_stepwise(row):
        prompt, steps, labels = math_shepherd(row, where)
        return SHEPHERD_INPUT, prompt, steps, labels, {SHEPHERD_INPUT, SHEPHERD_LABEL}
    raise DataError(f"{where}: neither TRL's stepwise columns ({COMPLETIONS!r}, {LABELS!r}) nor Math-Shepherd's "
                    f"({SHEPHERD_INPUT!r} with {SHEPHERD_TAG!r} tags, {SHEPHERD_LABEL!r}), but the split's first row "
                    f"has them; one split holds one kind of row (columns: {sorted(row)})")


ROW_PROMPT = object()  # the prompt is the row's prompt column
