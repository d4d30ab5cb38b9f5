"""Rows -> the one text the encoder sees: plain strings by the recipe's template, conversations
by its chat template.

TRL's four preference shapes are accepted (and the pointwise ``messages`` + ``label`` shape):

* standard, implicit prompt: ``chosen``/``rejected`` strings;
* standard, explicit prompt: ``prompt`` string + ``chosen``/``rejected`` strings (joined by the
  recipe's ``template``);
* conversational, implicit prompt: ``chosen``/``rejected`` are whole conversations, lists of
  ``{"role", "content"}`` messages ending with the assistant turn being judged;
* conversational, explicit prompt: ``prompt`` is a message list and ``chosen``/``rejected`` the
  assistant turn(s) that follow it.

A conversation (the prompt's messages followed by the response's) is rendered exactly as
``tokenizer.apply_chat_template(messages, tokenize=False)`` renders it: with transformers' own
Jinja renderer, the recipe's chat template and the tokenizer's special tokens, both recorded in
the recipe so that a scorer renders the same text without loading the tokenizer. The same
conversation therefore gives the same text, and key, in either shape. Messages' keys whose value
is None are dropped first (Arrow and Parquet give every message every key of the column's
struct), as apply_chat_template does.

Rendering imports ``transformers.utils.chat_template_utils`` (no model, no tokenizer) only when a
conversation is met; the tokenizer itself is loaded only when the recipe lacks a chat template.
"""

from __future__ import annotations

import functools
from dataclasses import replace

from ..config import TextRecipe
from .readers import DataError


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

    from ..encode.identity import EncoderError, resolve_model_path

    try:
        tok = AutoTokenizer.from_pretrained(resolve_model_path(model), revision=revision)
    except (OSError, ValueError) as e:
        raise EncoderError(f"cannot load the tokenizer of {model!r} to render conversations: "
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


class TextBuilder:
    """Builds the texts of rows with one recipe, and remembers what it used (for the checkpoint).

    ``model``/``revision`` name the encoder whose tokenizer supplies the chat template and special
    tokens when the recipe lacks them; the tokenizer is loaded only if a conversation is met.
    ``require_prompt``: the recipe comes from a head whose texts joined prompts, so a row without
    the prompt column is refused instead of becoming a bare response."""

    def __init__(self, recipe: TextRecipe, model: str | None = None, revision: str | None = None,
                 require_prompt: bool = False):
        self.recipe = recipe
        self.model, self.revision = model, revision
        self.require_prompt = require_prompt  # rows (and LiveScorer calls) must give the prompt
        self.used_prompt = False
        self.used_chat = False

    def _chat_recipe(self, where: str, col: str) -> TextRecipe:
        r = self.recipe
        if r.chat_template is not None and r.chat_tokens is not None:
            return r
        if self.model is None:
            raise DataError(f"{where}: column {col!r} is a conversation; rendering it needs the encoder's tokenizer "
                            "(its chat template and special tokens): give the model")
        template, tokens = tokenizer_chat(self.model, self.revision)
        if r.chat_template is None and template is None:
            raise DataError(f"{where}: column {col!r} is a conversation, but the tokenizer of {self.model} has no "
                            "chat template to render it; give one with --chat-template FILE")
        self.recipe = replace(r, chat_template=r.chat_template or template,
                              chat_tokens=r.chat_tokens if r.chat_tokens is not None else tokens)
        return self.recipe

    def prompt_col_for(self, response) -> str | None:
        """The column holding a row's prompt: the recipe's; for a conversation also 'prompt' when
        the recipe names none, since a conversation's prompt messages belong to it whichever TRL
        shape carries them (implicit: inside the conversation; explicit: in the prompt column)."""
        if self.recipe.prompt_col or not isinstance(response, (list, tuple)):
            return self.recipe.prompt_col
        return TextRecipe().prompt_col

    def build(self, response, prompt, where: str, col: str, flag: str | None = None) -> tuple[str, int | None]:
        """The text of one response (a string or a conversation) with its row's prompt (None, a
        string or a message list), and the character offset where the response starts in it."""
        if type(response) is str and (prompt is None or type(prompt) is str) and response.strip():  # fast path
            self.used_prompt = self.used_prompt or bool(prompt)
            return self.recipe.render(response, prompt), self.recipe.response_start(prompt)
        prompt_col = self.recipe.prompt_col
        if isinstance(response, str):
            if not response.strip():
                raise DataError(f"{where}: column {col!r} is empty")
            if isinstance(prompt, (list, tuple)):
                raise DataError(f"{where}: column {prompt_col!r} is a conversation but {col!r} is a string; give the "
                                f"response as its assistant turn: [{{\"role\": \"assistant\", \"content\": …}}]")
            if prompt is not None and not isinstance(prompt, str):
                raise DataError(f"{where}: column {prompt_col!r} must be a string or a list of messages, "
                                f"got {_describe(prompt)}")
            self.used_prompt = self.used_prompt or bool(prompt)
            return self.recipe.render(response, prompt), self.recipe.response_start(prompt)
        if isinstance(response, (list, tuple)):
            turns = check_messages(response, where, col)
            if prompt is None or (isinstance(prompt, str) and not prompt):
                messages = turns
            elif isinstance(prompt, (list, tuple)):
                messages = check_messages(prompt, where, prompt_col, final_assistant=False) + turns
                self.used_prompt = True
            else:
                raise DataError(f"{where}: column {col!r} is a conversation but {prompt_col!r} is a "
                                f"{_describe(prompt)}; give the prompt as a list of messages too (or drop it)")
            r = self._chat_recipe(where, col)
            self.used_chat = True
            text = render_conversation(r.chat_template, r.chat_tokens, messages, where)
            if not text.strip():
                raise DataError(f"{where}: the chat template renders this conversation as an empty text")
            return text, final_turn_start(text, messages)
        if response is None:
            raise DataError(f"{where}: column {col!r} is null" + (f"; choose it with {flag}" if flag else ""))
        raise DataError(f"{where}: column {col!r} must be a string, got {_describe(response)} (or a list of "
                        "role/content messages)")

    def used(self) -> TextRecipe:
        """The recipe a scorer must repeat: the prompt column only if prompts were joined, the chat
        template and tokens only if conversations were rendered."""
        r = self.recipe
        return TextRecipe(r.template, r.prompt_col if self.used_prompt else None,
                          r.chat_template if self.used_chat else None, r.chat_tokens if self.used_chat else None)


def response_value(row: dict, where: str, text_col: str, messages_col: str | None = None, flag: str = "--text-col"):
    """A pointwise row's response: ``row[text_col]``, else (when the row has no such column)
    ``row[messages_col]``; a DataError naming both when neither is there."""
    if messages_col and row.get(text_col) is None and row.get(messages_col) is not None:
        return row[messages_col], messages_col  # columnar files give every row both columns
    if text_col in row or not messages_col or messages_col not in row:
        if text_col not in row:
            alt = f" or {messages_col!r}" if messages_col else ""
            raise DataError(f"{where}: column {text_col!r}{alt} is missing (columns: {sorted(row)}); choose it "
                            f"with {flag}")
        return row[text_col], text_col
    return row[messages_col], messages_col
