"""Conversations: validation, rendering by a chat template, and the template kind's reading of them.

A conversation (the prompt's messages followed by the response's) is rendered exactly as
``tokenizer.apply_chat_template(messages, tokenize=False)`` renders it: with transformers' own
Jinja renderer, the recipe's chat template and the tokenizer's special tokens, both recorded in
the recipe so that a scorer renders the same text without loading the tokenizer. Messages' keys
whose value is None are dropped first (Arrow and Parquet give every message every key of the
column's struct), as apply_chat_template does.

Rendering imports ``transformers.utils.chat_template_utils`` (no model, no tokenizer) only when a
conversation is met; the tokenizer itself is loaded only when the recipe lacks its tokens.
"""

from __future__ import annotations

import functools

from ..errors import DataError


def _describe(value) -> str:
    return type(value).__name__


def check_messages(value, where: str, col: str, final_assistant: bool = True) -> list[dict]:
    """``value`` as a list of plain ``{"role", "content", …}`` messages (None-valued keys dropped),
    or a one-line DataError naming the row, the column, the message and the problem."""
    if not isinstance(value, (list, tuple)) or not value:
        raise DataError(f"{where}: column {col!r} must be a non-empty list of messages, got "
                        f"{'an empty list' if isinstance(value, (list, tuple)) else _describe(value)}")
    if not any(isinstance(m, dict) for m in value):
        kinds = ", ".join(sorted({_describe(m) for m in value}))
        raise DataError(f"{where}: column {col!r} must be a string, got list of {kinds} (a conversation is a list "
                        "of {\"role\", \"content\"} messages)")
    out = []
    for i, m in enumerate(value, 1):
        if not isinstance(m, dict):
            raise DataError(f"{where}: column {col!r} message {i} must be an object with 'role' and 'content', "
                            f"got {_describe(m)}")
        m = {k: v for k, v in m.items() if v is not None}
        for key in ("role", "content"):
            if key not in m:
                raise DataError(f"{where}: column {col!r} message {i} has no {key!r} (keys: {sorted(m)})")
        if not isinstance(m["role"], str) or not m["role"].strip():
            raise DataError(f"{where}: column {col!r} message {i}: 'role' must be a non-empty string, "
                            f"got {m['role']!r:.40}")
        if not isinstance(m["content"], (str, list)):
            raise DataError(f"{where}: column {col!r} message {i}: 'content' must be a string, "
                            f"got {_describe(m['content'])}")
        out.append(m)
    if final_assistant and out[-1]["role"] != "assistant":
        raise DataError(f"{where}: column {col!r} ends with a {out[-1]['role']!r} message; a scored conversation "
                        "must end with the assistant turn being judged")
    return out


@functools.lru_cache(maxsize=8)
def tokenizer_chat(model: str, revision: str | None = None) -> tuple[str | None, dict]:
    """The chat template of ``model``'s tokenizer (None when it has none) and its special tokens,
    as apply_chat_template passes them to the template. Loads the tokenizer only."""
    from transformers import AutoTokenizer

    from ..models import EncoderError, resolve_model_path

    try:
        tok = AutoTokenizer.from_pretrained(resolve_model_path(model), revision=revision)
    except (OSError, ValueError) as e:
        raise EncoderError(f"cannot load the tokenizer of {model!r} to render texts: "
                           f"{str(e).splitlines()[0]}") from e
    template = tok.chat_template
    if isinstance(template, dict):  # several named templates: apply_chat_template uses "default"
        template = template.get("default")
    tokens = {k: (list(map(str, v)) if isinstance(v, (list, tuple)) else str(v))
              for k, v in tok.special_tokens_map.items()}
    return template, tokens


def render_conversation(chat_template: str, tokens: dict, messages: list[dict], where: str) -> str:
    """``messages`` rendered as ``apply_chat_template(messages, tokenize=False)`` renders them with
    ``chat_template`` and a tokenizer whose special tokens are ``tokens``."""
    import jinja2
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        rendered, _ = render_jinja_template(conversations=[messages], chat_template=chat_template, **tokens)
    except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError, KeyError, IndexError, AttributeError) as e:
        raise DataError(f"{where}: the chat template does not render this conversation "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    return rendered[0]


def final_turn_start(text: str, messages: list[dict]) -> int | None:
    """Character offset in ``text`` where the final assistant message's content starts (what
    response-only pooling reads), or None when the template changed it beyond recognition."""
    content = messages[-1]["content"]
    if not isinstance(content, str):
        return None
    for needle in (content, content.strip()):
        if needle:
            i = text.rfind(needle)
            if i >= 0:
                return i
    return None


def template_turns(messages: list[dict], where: str, template: str) -> tuple[str | None, str]:
    """A conversation as the template kind reads it: ``(prompt, response)`` of ``[user,
    assistant]`` (or ``(None, response)`` of ``[assistant]``), string contents only. Anything
    else cannot be written by a ``{prompt}``/``{response}`` template and is refused in one line."""
    roles = [m["role"] for m in messages]
    if roles not in (["user", "assistant"], ["assistant"]):
        why = ("a system turn" if "system" in roles else
               f"{roles.count('assistant')} assistant and {roles.count('user')} user turns" if len(roles) > 2 else
               f"the roles {roles}")
        raise DataError(f"{where}: this conversation has {why}, which the template {template!r} cannot express "
                          "(it joins one prompt and one response); score conversations with a chat template "
                          "(--recipe chat, or --chat-template FILE)")
    if not all(isinstance(m["content"], str) for m in messages):
        raise DataError(f"{where}: a message's content is a list of parts, which the template {template!r} cannot "
                          "express; use a chat template (--recipe chat)")
    if len(messages) == 1:
        return None, messages[0]["content"]
    return messages[0]["content"], messages[1]["content"]
