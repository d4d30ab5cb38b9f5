"""Every configuration object in one import, for users and notebooks: each is owned, and
documented field by field, by the package whose behaviour it configures —

* :class:`~orm_cache.data.spec.DataSpec` (data/): where traces come from, how rows become texts;
* :class:`~orm_cache.encode.spec.EncoderSpec`, :class:`~orm_cache.encode.spec.RunSpec` (encode/):
  what decides a vector, and how stage 1 runs;
* :class:`~orm_cache.head.config.HeadConfig` (head/): how a head trains;
* :class:`~orm_cache.text.recipe.TextRecipe` (text/): how a row becomes the text the encoder sees.

Bad values raise :class:`~orm_cache.errors.ConfigError` naming the option and the allowed values.
Nothing inside orm_cache imports this module but the CLI and the use cases.
"""

from .data.spec import DEFAULT_DATA, DataSpec  # noqa: F401
from .encode.spec import (DEFAULT_BATCH_TOKENS, DEVICES, DTYPES, POOLINGS, TRUNCATION_SIDES, EncoderSpec,  # noqa: F401
                          RunSpec, batch_tokens_for)
from .errors import ConfigConflict, ConfigError, RecipeError  # noqa: F401
from .fields import check_choice as _check_choice, field_docs, parse_csv  # noqa: F401
from .head.config import FIELD_USED_BY, HEAD_FIELDS, HEAD_KINDS, OBJECTIVES, SOLVER_ONLY, HeadConfig  # noqa: F401
from .models import BUNDLED_MINILM, DEFAULT_MODEL  # noqa: F401
from .store.columns import feature_column, feature_parts  # noqa: F401
from .text.recipe import DEFAULT_TEMPLATE, TextRecipe, check_template, read_chat_template  # noqa: F401

__all__ = ["BUNDLED_MINILM", "DEFAULT_BATCH_TOKENS", "DEFAULT_DATA", "DEFAULT_MODEL", "DEFAULT_TEMPLATE", "DEVICES",
           "DTYPES", "FIELD_USED_BY", "HEAD_FIELDS", "HEAD_KINDS", "OBJECTIVES", "POOLINGS", "SOLVER_ONLY",
           "TRUNCATION_SIDES", "ConfigConflict", "ConfigError", "DataSpec", "EncoderSpec", "HeadConfig", "RecipeError",
           "RunSpec", "TextRecipe", "batch_tokens_for", "check_template", "feature_column", "feature_parts",
           "field_docs", "parse_csv", "read_chat_template"]
