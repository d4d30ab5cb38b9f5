"""A text recipe: how a row becomes the one string the encoder sees, and how it is tokenized.

Two kinds, decided once per recipe (never per row), so that a trace becomes the same text
whatever shape it arrives in:

* ``template``: ``template.format(prompt=..., response=...)`` (the reference card's
  ``"{prompt}\\n\\n{response}"`` by default), tokenized as ``tokenizer(text)`` (special tokens
  added). A conversation of one user turn and one assistant turn (or the assistant turn alone)
  is that prompt and response; any other conversation is refused (the template cannot say it).
  ``eos``: the tokenizer's EOS token is appended to every text that does not end with it, as
  TRL's RewardTrainer does to standard (non-conversational) data.
* ``chat``: a conversation rendered by the chat template, as
  ``apply_chat_template(messages, tokenize=False)``, and tokenized without adding special
  tokens again (what ``apply_chat_template(tokenize=True)`` and TRL do). A string prompt and
  response are the user and assistant turns.

``auto`` (the default) is ``chat`` when a chat template is given or the first row is a
conversation, else ``template``; a head records the kind it was trained with. The ``trl``
preset is TRL's conventions: ``"{prompt}{response}"`` with EOS appended for strings, the chat
template for conversations. In every kind a bare string with no prompt is taken as the complete
text (pre-rendered).
"""

from __future__ import annotations

import functools
import os
import string
from dataclasses import asdict, dataclass, replace

from ..errors import RecipeError

DEFAULT_TEMPLATE = "{prompt}\n\n{response}"
TRL_TEMPLATE = "{prompt}{response}"
KINDS = ("auto", "template", "chat")
PRESETS = ("auto", "template", "chat", "trl")


def check_template(template: str) -> str:
    """``template`` if it is a ``str.format`` string over ``{prompt}`` and ``{response}`` only
    (``{response}`` required), else ValueError saying what is wrong."""
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise RecipeError(f"template {template!r} is not a valid format string ({e}); "
                          "write literal braces as {{ and }}") from None
    unknown = sorted({n for n in names if n not in ("prompt", "response")})
    if unknown:
        shown = ", ".join("{" + n + "}" for n in unknown)
        raise RecipeError(f"template {template!r} has unknown placeholder(s) {shown}; only {{prompt}} and "
                          "{response} are filled in (write literal braces as {{ and }})")
    if "response" not in names:
        raise RecipeError(f"template {template!r} must contain {{response}}")
    return template


def read_chat_template(value: str | None) -> str | None:
    """A chat template given as its Jinja text or as the path of a file holding it -> its text.
    Text is recognised by Jinja markup (``{{`` or ``{%``); anything else must name a file."""
    if value is None or "{{" in value or "{%" in value:
        return value
    path = os.path.expanduser(value)
    if not os.path.isfile(path):
        raise RecipeError(f"chat template {value!r}: no such file (give a Jinja file, e.g. --chat-template "
                          "chat.jinja, or the template text itself)")
    with open(path, encoding="utf-8-sig") as f:
        text = f.read()
    if "{{" not in text and "{%" not in text:
        raise RecipeError(f"chat template {value}: the file holds no Jinja markup ({{{{ … }}}} or {{% … %}}); "
                          "it renders no messages")
    return text


@dataclass(frozen=True)
class TextRecipe:
    """How a row becomes the one text the encoder sees, and how that text is tokenized. A head
    records the recipe of its training texts, and every door uses it: a text built another way
    is another text."""

    template: str = DEFAULT_TEMPLATE
    """``str.format`` string joining ``{prompt}`` and ``{response}`` (template kind)."""
    prompt_col: str | None = "prompt"
    """Column holding the prompt; None: the text is the response alone."""
    chat_template: str | None = None
    """Jinja chat template rendering conversations (chat kind) exactly as the tokenizer's
    ``apply_chat_template(messages, tokenize=False)`` does. None: the encoder tokenizer's own,
    taken when the first conversation is met."""
    chat_tokens: dict | None = None
    """The tokenizer's special tokens (``bos_token``, ``eos_token``, …) as apply_chat_template
    passes them to a chat template; also the EOS that ``eos`` appends. Taken from the encoder's
    tokenizer when first needed, then recorded."""
    kind: str = "auto"
    """template, chat, or auto (chat when a chat template is given or the first row is a
    conversation, else template)."""
    eos: bool = False
    """Append the tokenizer's EOS token to template-kind texts that do not end with it (TRL's
    RewardTrainer does this to standard data)."""

    def __post_init__(self):
        check_template(self.template)
        object.__setattr__(self, "prompt_col", self.prompt_col or None)
        if self.chat_template is not None and not isinstance(self.chat_template, str):
            raise RecipeError(f"chat_template must be a string, got {type(self.chat_template).__name__}")
        if self.chat_tokens is not None:
            object.__setattr__(self, "chat_tokens", dict(self.chat_tokens))
        if self.kind not in KINDS:
            raise RecipeError(f"recipe kind {self.kind!r} is not one of {', '.join(KINDS)}")
        object.__setattr__(self, "eos", bool(self.eos))

    @property
    def special_tokens(self) -> bool:
        """Whether the tokenizer adds its special tokens to these texts (not to chat-rendered
        ones, which carry whatever the template wrote). Decided for a resolved kind only."""
        if self.kind == "auto":
            raise RuntimeError("the recipe's kind is not resolved yet (it is once the first row is built)")
        return self.kind != "chat"

    @property
    def eos_token(self) -> str | None:
        return (self.chat_tokens or {}).get("eos_token")

    @classmethod
    def from_options(cls, template: str | None = None, prompt_col: str | None = None,
                     chat_template: str | None = None, preset: str | None = None) -> "TextRecipe":
        """From options where None means "not given" (the default) and prompt_col '' means none;
        ``chat_template`` is the template's text or a file holding it; ``preset`` one of
        auto, template, chat, trl (TRL's conventions: strings joined with no separator and the
        EOS appended; conversations by the chat template)."""
        preset = preset or "auto"
        if preset not in PRESETS:
            raise RecipeError(f"--recipe {preset!r} is not one of {', '.join(PRESETS)}")
        d = cls()
        default_template = TRL_TEMPLATE if preset == "trl" else d.template
        return cls(default_template if template is None else template,
                   d.prompt_col if prompt_col is None else prompt_col, read_chat_template(chat_template),
                   kind="auto" if preset == "trl" else preset, eos=preset == "trl")

    @classmethod
    def from_dict(cls, d: dict) -> "TextRecipe":
        """A recipe as a checkpoint records it. Heads written before kinds existed record none:
        theirs is ``template`` when they rendered no conversation, else ``legacy-chat``
        (refused by :meth:`for_head`: those texts were tokenized with special tokens added to
        already-rendered chat, another token sequence than today's)."""
        kind = d.get("kind")
        if kind is None:
            kind = "template" if d.get("chat_template") is None else "chat"
        return cls(d.get("template", DEFAULT_TEMPLATE), d.get("prompt_col"), d.get("chat_template"),
                   d.get("chat_tokens"), kind, bool(d.get("eos", False)))

    @classmethod
    def for_head(cls, recorded: dict | None, template: str | None = None, prompt_col: str | None = None,
                 override: bool = False, chat_template: str | None = None,
                 preset: str | None = None) -> "TextRecipe":
        """The recipe to score with for a head that recorded ``recorded`` (None: an old or
        reference-format head). Options not given (None) take the recorded values; a given
        value that differs (kind, template, EOS rule, chat template) is refused, both shown,
        unless ``override``. The prompt column names data, not recipe: it is read wherever rows
        have it (default ``prompt``), and dropped ('') only on purpose. A head that recorded no
        chat template saw no conversations, so any chat template may render them; the chat
        tokens are always the recorded ones (they are the tokenizer's, not an option)."""
        if not recorded:  # a reference-format head: the reference card's recipe unless told otherwise
            r = cls.from_options(template, prompt_col, chat_template, preset)
            return r if r.kind != "auto" or r.chat_template is not None or preset else replace(r, kind="template")
        if recorded.get("chat_template") is not None and "kind" not in recorded and not override:
            raise RecipeError("this head was trained on conversations tokenized with the tokenizer's special tokens "
                              "added to the chat-rendered text (orm-cache before recipe kinds; a template that "
                              "writes its own BOS got two); texts are now tokenized as apply_chat_template does, "
                              "so retrain the head with fit-head on freshly embedded data, or add "
                              "--override-recipe to score it anyway")
        rec = cls.from_dict(recorded)
        chat_template = read_chat_template(chat_template)
        asked = cls.from_options(template, prompt_col, chat_template, preset) if preset else None
        if template is None:
            template = rec.template if asked is None else asked.template
        if prompt_col == "" and rec.prompt_col and not override:
            raise RecipeError(f"--prompt-col '': the head was trained on prompts from column {rec.prompt_col!r} joined "
                              "to each response; score bare responses on purpose with --override-recipe")
        # The prompt column maps the data (a row's prompt is part of its trace under any name): it
        # is read whenever the data has it, and it is no part of the comparison.
        prompt_col = (rec.prompt_col or "prompt") if prompt_col is None else prompt_col
        given = cls(template, prompt_col, rec.chat_template if chat_template is None else chat_template,
                    rec.chat_tokens, rec.kind if asked is None or asked.kind == "auto" else asked.kind,
                    rec.eos if asked is None else asked.eos)
        if rec.kind == "template" and chat_template is not None and not override:
            raise RecipeError("--chat-template: this head's recipe is template (its texts were strings joined by "
                              f"{rec.template!r}, conversations included), so a chat template would build other texts; "
                              "add --override-recipe to score chat-rendered texts on purpose")
        if rec.chat_template is None and not override:
            rec = replace(rec, chat_template=given.chat_template)  # no conversations in training: nothing to contradict
        rec = replace(rec, prompt_col=given.prompt_col)
        if rec.kind == "chat" and asked is not None and asked.kind == "auto":
            given = replace(given, kind="chat")  # trl/auto on a conversational head: the chat template, as TRL does
        if rec.kind == given.kind == "chat":  # a chat text has no template or EOS rule: nothing to contradict
            given = replace(given, template=rec.template, eos=rec.eos)
        fields = ("kind", "template", "eos", "chat_template")
        if any(getattr(given, f) != getattr(rec, f) for f in fields) and not override:
            diff = "; ".join(f"{name}: head {_shown(getattr(rec, name))}, given {_shown(getattr(given, name))}"
                             for name in fields if getattr(rec, name) != getattr(given, name))
            raise RecipeError(f"the head was trained on texts built another way ({diff}); a different recipe "
                              "gives different texts and meaningless scores. Drop the option to use the "
                              "head's recipe, or add --override-recipe to score this way on purpose")
        return given

    def render(self, response: str, prompt: str | None) -> str:
        """Join prompt and response by the template (a missing or empty prompt gives the
        response itself), with the EOS appended when the recipe says so."""
        text = response if not prompt else self.template.format(prompt=prompt, response=response)
        return self.with_eos(text)

    def with_eos(self, text: str) -> str:
        """``text`` with the EOS token appended (template kind with ``eos``), unless it ends with it."""
        if not self.eos or self.kind == "chat":
            return text
        eos = self.eos_token
        if not eos:
            raise RecipeError("the recipe appends the EOS token, but the tokenizer's special tokens are not known "
                              "(give the encoder model)")
        return text if text.endswith(eos) else text + eos

    def response_start(self, prompt: str | None) -> int:
        """Character offset of the response in ``render(response, prompt)`` (0 without a prompt)."""
        if not prompt:
            return 0
        offset = _response_offset(self.template)
        if offset is None:  # a format spec changes the prompt's length: find the response instead
            mark = "\x00response\x00"
            return self.template.format(prompt=prompt, response=mark).index(mark)
        return offset[0] + offset[1] * len(prompt)

    def to_dict(self) -> dict:
        """Plain data for a checkpoint; the chat fields only when they were used."""
        d = asdict(self)
        for name in ("chat_template", "chat_tokens"):
            if d[name] is None:
                del d[name]
        return d


@functools.lru_cache(maxsize=64)
def _response_offset(template: str) -> tuple[int, int] | None:
    """Where ``{response}`` lands in ``template`` filled in: (characters of literal text before it,
    number of ``{prompt}`` fields before it), so the offset is ``fixed + n * len(prompt)``; None
    when a field before it has a format spec or conversion (its length is not the prompt's)."""
    fixed = n = 0
    for literal, name, spec, conv in string.Formatter().parse(template):
        fixed += len(literal)
        if name == "response":
            break
        if name is not None:
            if spec or conv:
                return None
            n += 1
    return fixed, n


def _shown(value) -> str:
    """A recipe value for a message: long chat templates are cut short."""
    r = repr(value)
    return r if len(r) <= 80 else r[:60] + f"…' ({len(value)} characters)"
