"""Steps of a trace, and the texts of its prefixes (a partial trace: a node of a search tree).

A *prefix* of a trace is its text as the recipe renders it with the response cut short, and cut
right after the response's last character: no closing chat tokens, no EOS (the trace is not
finished). :meth:`~orm_cache.text.build.TextBuilder.build_prefix` builds it for a partial
response given on its own (a node in a tree search), and :func:`step_ends` says where a whole
response's steps end, so the prefix at step ``k`` is ``build_prefix(response[:ends[k]])``: the
same string either way, so one key and one cached vector.

Steps are cut by a delimiter (a regular expression; a newline by default): a step ends where a
delimiter begins, the delimiter itself belongs to the next step, and a step holding only
whitespace is no step (``"a\\n\\nb"`` has two). Data that lists its steps (TRL's stepwise shape,
Math-Shepherd) gives the ends itself (:func:`joined_steps`).
"""

from __future__ import annotations

import functools

from ..errors import DataError, RecipeError

DEFAULT_STEP_PATTERN = r"\r?\n"  # a line break, Windows' too (a node never ends in \r)


STEP_SECONDS = 1.0  # a step pattern may search one response this long (a backtracking one is refused)


@functools.lru_cache(maxsize=16)
def step_regex(pattern: str):
    """``pattern`` compiled (the ``regex`` module, for its time limit); a one-line error when it is
    not a regular expression or matches the empty string (it would cut between every character)."""
    import regex

    try:
        rx = regex.compile(pattern)
    except regex.error as e:
        raise RecipeError(f"--step-pattern {pattern} is not a regular expression ({e})") from None
    if rx.fullmatch(""):
        raise RecipeError(f"--step-pattern {pattern} matches the empty string; give a delimiter such as '\\n' "
                          "or '\\n\\n'")
    return rx


def step_ends(content: str, pattern: str = DEFAULT_STEP_PATTERN) -> list[int]:
    """Where each step of ``content`` ends (exclusive character offsets, increasing): at the start
    of each delimiter that follows some non-whitespace, and at the end of the content when its
    last step is not blank. The last end is the end of the last step, not always ``len(content)``
    (a trailing delimiter is no step)."""
    rx = step_regex(pattern)
    ends, last = [], 0
    try:
        matches = list(rx.finditer(content, timeout=STEP_SECONDS))
    except TimeoutError:
        raise RecipeError(f"--step-pattern {pattern} took over {STEP_SECONDS:g}s on one response (a pattern that "
                          "backtracks); give a simpler delimiter") from None
    for m in matches:
        if content[last:m.start()].strip():
            ends.append(m.start())
        last = m.end()
    if content[last:].strip():
        ends.append(len(content))
    return ends


def joined_steps(steps: list, where: str, col: str, separator: str = "\n") -> tuple[str, list[int]]:
    """A response given as a list of steps (TRL's stepwise shape) -> the response text, its steps
    joined by ``separator`` (as TRL's PRM trainer joins them), and where each step ends."""
    if not isinstance(steps, (list, tuple)) or not steps:
        raise DataError(f"{where}: column {col!r} must be a non-empty list of steps (strings)")
    ends, pos, parts = [], 0, []
    for i, s in enumerate(steps):
        if not isinstance(s, str) or not s.strip():
            raise DataError(f"{where}: column {col!r}: step {i} must be a non-empty string, got {s!r:.40}")
        if i:
            pos += len(separator)
        pos += len(s)
        parts.append(s)
        ends.append(pos)
    return separator.join(parts), ends


def cut_response(response, end: int):
    """``response`` (a string, or a conversation whose last message is the assistant turn) with
    its response text cut to its first ``end`` characters."""
    if isinstance(response, str):
        return response[:end]
    last = dict(response[-1])
    last["content"] = last["content"][:end]
    return [*response[:-1], last]


PREFIX_MARK = "\ue000orm-cache:end\ue001"  # private-use characters: no text holds them


def append_text(response, tail: str):
    """``response`` (a string, or a conversation) with ``tail`` after its response text."""
    if isinstance(response, str):
        return response + tail
    last = dict(response[-1])
    last["content"] = last["content"] + tail
    return [*response[:-1], last]


def response_text(response) -> str | None:
    """The text whose steps are cut: a string response itself, a conversation's final message's
    content (None when it is not a string, e.g. a list of parts)."""
    if isinstance(response, str):
        return response
    content = response[-1].get("content") if isinstance(response[-1], dict) else None
    return content if isinstance(content, str) else None
