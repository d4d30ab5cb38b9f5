"""Row -> text -> key: recipes, conversations, response spans and the content address. Every
door (ingest, embed, the stage-2 commands, LiveScorer, export, the server) builds texts here and
nowhere else, so one trace is one text whatever shape or door it comes through."""

from .build import TextBuilder, prompt_field, response_column, response_value
from .conversation import check_messages, final_turn_start, render_conversation, tokenizer_chat
from .key import trace_key
from .steps import DEFAULT_STEP_PATTERN, joined_steps, step_ends, step_regex
from .recipe import DEFAULT_TEMPLATE, PRESETS, TRL_TEMPLATE, TextRecipe, check_template, read_chat_template

__all__ = ["DEFAULT_STEP_PATTERN", "DEFAULT_TEMPLATE", "joined_steps", "step_ends", "step_regex", "PRESETS", "TRL_TEMPLATE", "TextBuilder", "TextRecipe", "check_messages",
           "check_template", "final_turn_start", "prompt_field", "read_chat_template", "render_conversation",
           "response_column", "response_value", "tokenizer_chat", "trace_key"]
