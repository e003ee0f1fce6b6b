"""The feature spec: everything needed to turn a raw row into the model's input exactly as Spark did in training.

Spark's preprocessing job fits it on the training split and writes it as `feature_spec.json` beside the Parquet
splits; training reads its column lists; serving applies `FeatureSpec.transform` to raw request rows. The transform:
  numeric column x   -> (x_or_fill - mean) / std     (std 0 -> 1; missing and non-finite x -> fill, the training mean)
  categorical col c  -> one-hot over the training categories, plus `c=__other__` for unseen, rare or missing values
Categorical values are keyed by `normalise_category`, which the Spark job mirrors with built-in expressions.

  rules     what the Spark job mirrors: the constants, `normalise_category`, `parse_number`
  spec      the dataclasses: `FeatureSpec` and its features
  columnar  `FeatureSpec.transform`, column by column (numpy; pyarrow for strings in numeric columns)
  distributions  the training distributions the drift monitor compares with (a file beside the spec, not in it)
"""

from __future__ import annotations

from ml.features.columnar import PYTHON_WHITESPACE, CodedColumn
from ml.features.distributions import (
    CategoricalDistribution,
    NumericDistribution,
    TrainingDistributions,
)
from ml.features.rules import (
    BOOLEAN_SPELLINGS,
    INTEGRAL_DECIMAL_PATTERN,
    LABEL_COLUMN,
    NON_FINITE_WORDS,
    NULL_TOKENS,
    NUMBER_PATTERN,
    OTHER,
    SPEC_VERSION,
    SPLITS,
    normalise_category,
    parse_number,
)
from ml.features.spec import CategoricalFeature, FeatureSpec, NumericFeature

__all__ = [
    "BOOLEAN_SPELLINGS",
    "INTEGRAL_DECIMAL_PATTERN",
    "LABEL_COLUMN",
    "NON_FINITE_WORDS",
    "NULL_TOKENS",
    "NUMBER_PATTERN",
    "OTHER",
    "PYTHON_WHITESPACE",
    "SPEC_VERSION",
    "SPLITS",
    "CategoricalDistribution",
    "CategoricalFeature",
    "CodedColumn",
    "FeatureSpec",
    "NumericDistribution",
    "NumericFeature",
    "TrainingDistributions",
    "normalise_category",
    "parse_number",
]
