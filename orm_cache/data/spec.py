"""Where traces come from and how rows become texts and pairs (:class:`DataSpec`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ..errors import ConfigError
from ..text.recipe import TextRecipe
from ..text.steps import step_regex

TRAIN_ON = ("traces", "prefixes")

DEFAULT_DATA = "LossFunctionLover/orm-pairwise-preference-pairs"


@dataclass(frozen=True)
class DataSpec:
    """Where the traces come from and how they become texts and pairs."""

    data: str = DEFAULT_DATA
    """Hub id; a .jsonl/.json/.parquet/.csv/.arrow/.jsonl.gz/.json.gz file; a directory of
    per-split files (also hub-style shards: data/train-00000-of-00003.parquet); or a folder
    written by datasets' save_to_disk (a Dataset or a DatasetDict)."""
    split: str = "train"
    """Split name: the files ``<split>.<ext>`` or ``<split>-*.<ext>`` (read as one) in a directory,
    a DatasetDict's split, a hub split, or the value of a ``split`` column in a single file (a
    single file without one is used whole)."""
    template: str | None = None
    """How a prompt and a response become the one text the encoder sees (only when a row has a
    prompt): ``str.format`` with ``{prompt}`` and ``{response}``. Default: the recipe a head was
    trained with (eval, verify, score, rank), else "{prompt}\\n\\n{response}"."""
    chosen_col: str = "chosen"
    """Pairwise column of the preferred trace."""
    rejected_col: str = "rejected"
    """Pairwise column of the dispreferred trace."""
    text_col: str = "text"
    """Pointwise column of the trace."""
    messages_col: str = "messages"
    """Pointwise column of a conversation (a list of role/content messages ending with the
    assistant turn scored), used when a row has no text column."""
    label_col: str = "label"
    """Pointwise column of the label: 1 correct, 0 incorrect."""
    group_col: str = "group"
    """Column naming the problem a trace answers (negatives are sampled, and best-of-N and
    bootstrap resampling work, within groups)."""
    prompt_col: str | None = None
    """Optional column joined in front of each response with --template ('' for none).
    Default: the head's recorded recipe (eval, verify, score, rank), else 'prompt'."""
    chat_template: str | None = None
    """Jinja chat template (a file, or the template text) rendering conversation rows, as
    apply_chat_template(messages, tokenize=False) does. Default: the head's recorded one (eval,
    verify, score, rank), else the encoder tokenizer's own."""
    chat_tokens: dict | None = None
    """Special tokens the chat template sees (a head's recorded ones; not an option: by default
    the encoder tokenizer's)."""
    recipe_kind: str | None = None
    """How rows become texts: template (strings joined by --template, tokenized with special
    tokens; a one-exchange conversation is its prompt and response), chat (conversations by the
    chat template, tokenized as apply_chat_template does; a string prompt and response are user
    and assistant turns), trl (TRL's RewardTrainer: prompt and response joined with no separator
    and EOS appended; conversations by the chat template), or auto (chat when the first row is a
    conversation or --chat-template is given, else template). Default: the head's recorded recipe
    (eval, verify, score, rank), else auto."""
    eos: bool | None = None
    """Append the tokenizer's EOS token to template texts (set by the trl recipe; a head's recorded rule)."""
    require_prompt: bool = False
    """Every row must have the prompt column (set for a head whose texts joined prompts: a row
    without it would silently become a bare response, another text)."""
    negatives: int | None = None
    """Pointwise data: negatives sampled per positive; default 8 for train, 4 otherwise."""
    pair_seed: int = 0
    """Seed for sampling negatives from pointwise data."""
    drop_duplicate_pairs: bool = False
    """Keep only the first of identical (chosen, rejected) pairs; duplicates are counted either way."""
    step_prefixes: bool = False
    """Each trace also has its step prefixes (cut by ``step_pattern``): embed stores their vectors
    from the trace's own forward pass (a causal encoder), eval and rank can aggregate their scores."""
    step_pattern: str | None = None
    """Where a response's steps end: a regular expression matching the delimiter between steps
    (default: the head's recorded one, else a line break, ``\\r?\\n``); a step holding only
    whitespace is none. Data that lists its steps (TRL's
    stepwise shape: prompt, completions, labels) needs none."""
    train_on: str = "traces"
    """traces (each row's traces, as they are), or prefixes: every step prefix of every trace, and
    the trace itself, labelled with the trace's outcome (a pairwise row: chosen 1, rejected 0;
    grouped by the row's group, else a pair by itself), Cobbe et al.'s outcome-supervised verifier."""
    keep_columns: tuple[str, ...] = ()
    """Pointwise data: metadata columns kept per trace (row), e.g. for ``eval --by``; the others
    are only named. (Pairwise rows keep all their other columns per pair.)"""

    def __post_init__(self):
        if not str(self.split).strip():
            raise ConfigError("--split '' names no split (give e.g. --split train)")
        if self.pair_seed < 0:
            raise ConfigError(f"--pair-seed {self.pair_seed} must be >= 0")
        self.recipe  # validates the template
        if self.negatives is not None and self.negatives < 1:
            raise ConfigError(f"--negatives {self.negatives} must be at least 1")
        if isinstance(self.keep_columns, str):
            raise ConfigError(f"keep_columns must be a sequence of column names, got the string {self.keep_columns!r}")
        object.__setattr__(self, "keep_columns", tuple(self.keep_columns))
        if self.train_on not in TRAIN_ON:
            raise ConfigError(f"--train-on {self.train_on!r} is not one of {', '.join(TRAIN_ON)}")
        if self.step_pattern is not None:
            step_regex(self.step_pattern)
        if self.train_on == "prefixes":
            object.__setattr__(self, "step_prefixes", True)

    @property
    def recipe(self) -> "TextRecipe":
        """How this spec's rows become texts (defaults filled in)."""
        r = TextRecipe.from_options(self.template, self.prompt_col, self.chat_template, self.recipe_kind)
        if self.eos is not None:
            r = replace(r, eos=self.eos)
        return replace(r, chat_tokens=self.chat_tokens) if self.chat_tokens is not None else r

    def with_recipe(self, recipe: "TextRecipe | dict") -> "DataSpec":
        """This spec building texts exactly as ``recipe`` (a resolved one, e.g. what a training
        split used) does: a validation split of the same data then gets the same texts and keys."""
        r = recipe if isinstance(recipe, TextRecipe) else TextRecipe.from_dict(recipe)
        return replace(self, template=r.template, chat_template=r.chat_template, chat_tokens=r.chat_tokens,
                       recipe_kind=r.kind, eos=r.eos)

    @property
    def negatives_per_positive(self) -> int:
        if self.negatives is not None:
            return self.negatives
        return 8 if self.split == "train" else 4

    def to_dict(self) -> dict:
        return asdict(self)
