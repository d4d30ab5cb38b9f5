"""The content address of a trace: one key names one token-id sequence.

A key is the sha256 of the exact string fed to the tokenizer, and of the tokenization rule when
it is not the tokenizer's default: text rendered by a chat template is tokenized without adding
special tokens a second time (transformers' convention, and TRL's), so the same string under that
rule is another token sequence and gets another key. Keys written before the rule existed (every
text tokenized with special tokens) keep their meaning: ``sha256(text)``.
"""

from __future__ import annotations

import hashlib

from ..errors import DataError

NO_SPECIAL_TOKENS = b"orm-cache:add_special_tokens=false\x00"  # salt of texts tokenized as they stand


def trace_key(text: str, special_tokens: bool = True) -> str:
    """sha256 hex of ``text`` (UTF-8); ``special_tokens=False`` (a text tokenized without the
    tokenizer's special tokens, as chat-rendered text is) salts it, so the two never share a key."""
    h = hashlib.sha256()
    if not special_tokens:
        h.update(NO_SPECIAL_TOKENS)
    try:
        h.update(text.encode("utf-8"))
    except UnicodeEncodeError as e:  # an unpaired surrogate: no UTF-8 string, so no key
        raise DataError(f"text {text[max(0, e.start - 30):e.start]!r}… holds an unpaired surrogate "
                        f"U+{ord(text[e.start]):04X} and cannot be encoded as UTF-8; fix that character") from None
    return h.hexdigest()
