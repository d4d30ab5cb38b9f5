"""Row -> text -> key: the one place a text is built.

TRL's preference shapes are accepted, and pointwise rows:

* standard, implicit prompt: ``chosen``/``rejected`` strings (complete texts);
* standard, explicit prompt: ``prompt`` string + ``chosen``/``rejected`` strings;
* conversational, implicit prompt: ``chosen``/``rejected`` are whole conversations, lists of
  ``{"role", "content"}`` messages ending with the assistant turn being judged;
* conversational, explicit prompt: ``prompt`` is a message list and ``chosen``/``rejected`` the
  assistant turn(s) that follow it;
* pointwise: ``text`` (a string or a conversation), ``messages`` (a conversation), or TRL's
  unpaired ``completion``, with an optional ``prompt`` (a string or messages).

Whatever the shape, the recipe (:mod:`.recipe`) decides the text: under a chat recipe a string
prompt and response are the user and assistant turns; under a template recipe a one-exchange
conversation is that prompt and response. So one trace is one text, one key, one score.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from ..errors import DataError
from .conversation import check_messages, final_turn_start, render_conversation, template_turns, tokenizer_chat
from .key import trace_key
from .recipe import TextRecipe
from .steps import DEFAULT_STEP_PATTERN, PREFIX_MARK, append_text, cut_response, response_text, step_ends

UNPAIRED_COMPLETION = "completion"  # TRL's unpaired preference shape: prompt, completion, label


def _describe(value) -> str:
    return type(value).__name__


class TextBuilder:
    """Builds the texts of rows with one recipe, and remembers what it used (for the checkpoint).

    ``model``/``revision`` name the encoder whose tokenizer supplies the chat template and special
    tokens when the recipe lacks them; the tokenizer is loaded only if they are needed.
    ``require_prompt``: the recipe comes from a head whose texts joined prompts, so a row without
    the prompt column is refused instead of becoming a bare response. An ``auto`` recipe takes
    its kind from the first text built (a conversation, or a chat template given: chat; else
    template) and keeps it for every later one."""

    def __init__(self, recipe: TextRecipe, model: str | None = None, revision: str | None = None,
                 require_prompt: bool = False, tokens: Callable[[], tuple[str | None, dict]] | None = None):
        self.recipe = recipe
        self.model, self.revision = model, revision
        self._tokens = tokens
        self.require_prompt = require_prompt  # rows (and LiveScorer calls) must give the prompt
        self.used_prompt = False
        self.used_chat = False

    # -- the recipe, completed on demand -----------------------------------------------------
    def _tokenizer_chat(self, where: str, why: str) -> tuple[str | None, dict]:
        if self._tokens is not None:
            return self._tokens()
        if self.model is None:
            raise DataError(f"{where}: {why} needs the encoder's tokenizer (its chat template and special tokens): "
                            "give the model")
        return tokenizer_chat(self.model, self.revision)

    def _resolve(self, response, prompt) -> TextRecipe:
        r = self.recipe
        if r.kind == "auto":
            chat = r.chat_template is not None or isinstance(response, (list, tuple)) or isinstance(prompt, (list, tuple))
            self.recipe = r = replace(r, kind="chat" if chat else "template")
        return r

    def _with_tokens(self, where: str, col: str, chat: bool) -> TextRecipe:
        r = self.recipe
        if r.chat_tokens is not None and (r.chat_template is not None or not chat):
            return r
        template, tokens = self._tokenizer_chat(where, f"column {col!r}: " + (
            "rendering it with the chat template" if chat else "appending the EOS token"))
        if chat and r.chat_template is None and template is None:
            raise DataError(f"{where}: the chat recipe renders column {col!r} with a chat template, but the tokenizer of "
                            f"{self.model} has none; give one with --chat-template FILE (or use --recipe template)")
        if not chat and not tokens.get("eos_token"):
            raise DataError(f"{where}: the recipe appends the tokenizer's EOS token (trl), but the tokenizer of "
                            f"{self.model} has none; use --recipe template")
        self.recipe = replace(r, chat_template=r.chat_template or (template if chat else None),
                              chat_tokens=r.chat_tokens if r.chat_tokens is not None else tokens)
        return self.recipe

    @property
    def special_tokens(self) -> bool:
        """Whether the tokenizer adds special tokens to this builder's texts (its recipe's kind
        must be resolved: build a text first, or give a kind)."""
        return self.recipe.special_tokens

    def key(self, text: str) -> str:
        """The key of a text this builder built (its tokenization rule included)."""
        return trace_key(text, self.special_tokens)

    def prompt_col_for(self, response) -> str | None:
        """The column holding a row's prompt: the recipe's; for a conversation also 'prompt' when
        the recipe names none, since a conversation's prompt messages belong to it whichever TRL
        shape carries them (implicit: inside the conversation; explicit: in the prompt column)."""
        if self.recipe.prompt_col or not isinstance(response, (list, tuple)):
            return self.recipe.prompt_col
        return TextRecipe().prompt_col

    # -- building ----------------------------------------------------------------------------
    def build(self, response, prompt, where: str, col: str, flag: str | None = None) -> tuple[str, int | None]:
        """The text of one response (a string or a conversation) with its row's prompt (None, a
        string or a message list), and the character offset where the response starts in it
        (None: unknown, as for a string the chat recipe takes as already rendered)."""
        prompt_col = self.recipe.prompt_col or "prompt"
        if isinstance(response, str):
            if not response.strip():
                raise DataError(f"{where}: column {col!r} is empty")
        elif isinstance(response, (list, tuple)):
            response = check_messages(response, where, col)
            last = response[-1]["content"]
            if isinstance(last, str) and not last.strip():
                raise DataError(f"{where}: column {col!r}: the assistant turn being judged is empty")
        elif response is None:
            raise DataError(f"{where}: column {col!r} is null" + (f"; choose it with {flag}" if flag else ""))
        else:
            raise DataError(f"{where}: column {col!r} must be a string, got {_describe(response)} (or a list of "
                            "role/content messages)")
        if isinstance(prompt, (list, tuple)):
            prompt = check_messages(prompt, where, prompt_col, final_assistant=False)
        elif isinstance(prompt, str):
            prompt = prompt or None
        elif prompt is not None:
            raise DataError(f"{where}: column {prompt_col!r} must be a string or a list of messages, "
                            f"got {_describe(prompt)}")
        r = self._resolve(response, prompt)
        self.used_prompt = self.used_prompt or prompt is not None
        if r.kind == "chat":
            return self._chat(response, prompt, where, col)
        if not isinstance(response, str) or not (prompt is None or isinstance(prompt, str)):
            messages = ([{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt or [])) + (
                [{"role": "assistant", "content": response}] if isinstance(response, str) else response)
            prompt, response = template_turns(messages, where, r.template)
        if r.eos:
            r = self._with_tokens(where, col, chat=False)
        return r.render(response, prompt), r.response_start(prompt)

    def _chat(self, response, prompt, where: str, col: str) -> tuple[str, int | None]:
        if isinstance(response, str) and prompt is None:
            return response, None  # already rendered: where its response starts is not known
        messages = ([{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt or [])) + (
            [{"role": "assistant", "content": response}] if isinstance(response, str) else response)
        r = self._with_tokens(where, col, chat=True)
        self.used_chat = True
        text = render_conversation(r.chat_template, r.chat_tokens, messages, where)
        if not text.strip():
            raise DataError(f"{where}: the chat template renders this conversation as an empty text")
        return text, self._turn_start(text, messages, r, where)

    @staticmethod
    def _turn_start(text: str, messages: list[dict], r: TextRecipe, where: str) -> int | None:
        """Where the final assistant content starts in ``text``: found by rendering it once more
        with a mark after it (so a short response that recurs in the closing tokens or the
        prompt is not mistaken), else by searching for it (:func:`final_turn_start`)."""
        content = messages[-1]["content"]
        if isinstance(content, str) and content:
            marked = render_conversation(r.chat_template, r.chat_tokens, append_text(messages, PREFIX_MARK), where)
            end = marked.find(PREFIX_MARK)
            if end >= len(content) and marked.count(PREFIX_MARK) == 1 and text.startswith(marked[:end]) \
                    and marked[end - len(content):end] == content:
                return end - len(content)
        return final_turn_start(text, messages)

    def build_prefix(self, response, prompt, where: str, col: str, flag: str | None = None) -> tuple[str, int | None]:
        """The text of a partial trace (prefix mode): ``response`` (a string, or a conversation whose
        final assistant turn is unfinished) rendered with its prompt as :meth:`build` renders it,
        cut right after the response's last character: no closing chat tokens, no EOS. A string
        taken as already rendered is its own prefix. See :mod:`.steps`."""
        content = response_text(response) if isinstance(response, (str, list, tuple)) and response else None
        if content is None:
            return self.build(response, prompt, where, col, flag)  # refused there, in its words
        # Rendered with a mark after the response: where the mark lands is where the response ends,
        # whatever the closing tokens or the prompt hold (a short step can recur in either).
        text, start = self.build(append_text(response, PREFIX_MARK), prompt, where, col, flag)
        if start is None:  # taken as already rendered: the text is the partial trace itself
            return response, None
        end = text.find(PREFIX_MARK)
        head = text[:end]
        for needle in (content, content.lstrip()):
            if end >= 0 and needle and head.endswith(needle) and text.count(PREFIX_MARK) == 1:
                return head, end - len(needle)
        raise DataError(f"{where}: the recipe does not write the response of column {col!r} as it is, so where a "
                        "partial trace ends cannot be found")

    def build_steps(self, response, prompt, where: str, col: str, pattern: str | None = None,
                    ends: list[int] | None = None) -> list[tuple[str, int | None]]:
        """The prefix text (:meth:`build_prefix`) at the end of each step of ``response``: steps cut
        by the delimiter ``pattern`` (:func:`.steps.step_ends`), or ending at ``ends`` (character
        offsets in the response text, from data that lists its steps)."""
        content = response_text(response) if isinstance(response, (str, list, tuple)) and response else None
        if content is None:
            raise DataError(f"{where}: column {col!r}: the response is not text (a list of parts), so it has no steps")
        if ends is None:
            ends = step_ends(content, pattern or DEFAULT_STEP_PATTERN)
        if not ends:
            raise DataError(f"{where}: column {col!r} has no step (only whitespace between delimiters)")
        return [self.build_prefix(cut_response(response, e), prompt, where, col) for e in ends]

    def used(self) -> TextRecipe:
        """The recipe a scorer must repeat: its kind and EOS rule, the prompt column only if
        prompts were joined, the chat template and tokens only if conversations were rendered
        (the tokens also when an EOS was appended)."""
        r = self.recipe
        chat = self.used_chat or (r.kind == "chat" and r.chat_template is not None)
        tokens = r.chat_tokens if chat or (r.eos and r.kind == "template") else None
        return TextRecipe(r.template, r.prompt_col if self.used_prompt else None,
                          r.chat_template if chat else None, tokens, r.kind, r.eos)

    # -- rows --------------------------------------------------------------------------------
    def row_prompt(self, row: dict, response, where: str):
        """A row's prompt for ``response`` (see :func:`prompt_field`)."""
        return prompt_field(row, self.prompt_col_for(response), where,
                            self.require_prompt and isinstance(response, str))

    def row_text(self, row: dict, where: str, text_col: str = "text", messages_col: str | None = "messages",
                 prefix: bool = False) -> tuple[str, int | None]:
        """The text of one pointwise (or input) row and where its response starts; ``prefix``: the
        row's trace is unfinished (:meth:`build_prefix`)."""
        value, col = response_value(row, where, text_col, messages_col)
        flag = "--text-col" if col == text_col else "--messages-col"
        return (self.build_prefix if prefix else self.build)(value, self.row_prompt(row, value, where), where, col, flag)


def row_steps(builder: TextBuilder, row: dict, where: str, pattern: str | None, text_col: str = "text",
              messages_col: str | None = "messages") -> list[tuple[str, int | None]]:
    """The step prefixes (:meth:`TextBuilder.build_steps`) of one pointwise (or input) row's trace."""
    value, col = response_value(row, where, text_col, messages_col)
    return builder.build_steps(value, builder.row_prompt(row, value, where), where, col, pattern)


def prompt_field(row: dict, col: str | None, where: str, required: bool = False):
    """The optional prompt in ``row[col]``: None when absent, a string, or a list of messages
    (a conversational prompt); anything else is a DataError. ``required`` (a head whose texts
    joined prompts from ``col``): a row without that column is a DataError, not a bare response."""
    if required and col and col not in row:
        raise DataError(f"{where}: column {col!r} is missing, but the head was trained on prompts from it joined "
                        f"to each response (columns: {sorted(row)}); name the prompt column with --prompt-col, or "
                        "score bare responses on purpose with --prompt-col '' --override-recipe")
    p = row.get(col) if col else None
    if p is not None and not isinstance(p, (str, list, tuple)):
        raise DataError(f"{where}: column {col!r} must be a string or a list of messages, got {type(p).__name__}")
    return p


def response_column(row: dict, text_col: str, messages_col: str | None = None) -> str | None:
    """Which column holds a pointwise row's response: ``text_col``; else (when it is absent or
    null) ``messages_col``; else TRL's unpaired ``completion`` (when ``text_col`` is the default
    ``text``). None when the row has none of them."""
    for col in (text_col, messages_col, UNPAIRED_COMPLETION if text_col == "text" else None):
        if col and row.get(col) is not None:
            return col
    for col in (text_col, messages_col):  # present but null: named in the error
        if col and col in row:
            return col
    return None


def response_value(row: dict, where: str, text_col: str, messages_col: str | None = None, flag: str = "--text-col"):
    """A pointwise row's response and its column (:func:`response_column`); a DataError naming
    the columns looked for when there is none."""
    col = response_column(row, text_col, messages_col)
    if col is None:
        alt = f" or {messages_col!r}" if messages_col else ""
        raise DataError(f"{where}: column {text_col!r}{alt} is missing (columns: {sorted(row)}); choose it "
                        f"with {flag}")
    return row[col], col
