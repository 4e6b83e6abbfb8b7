"""The one difference between the transformers 5 releases this package supports: the cache's name.

transformers 5.24 renamed the cache argument of `forward` and the cache field of model and generate
outputs from `past_key_values` to `cache` (keeping the old name as a deprecated alias); earlier 5.x
releases know only `past_key_values`, and their generate() passes and reads that name. The models here
accept both names and return the cache under the installed release's name, `CACHE_FIELD`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers.modeling_outputs import CausalLMOutputWithPast

CACHE_FIELD = (
    "cache"
    if "cache" in {field.name for field in dataclasses.fields(CausalLMOutputWithPast)}
    else "past_key_values"
)


def output_cache(output: Any) -> Any:
    """The cache of a model or generate() output, under whichever name the installed transformers uses."""
    return getattr(output, CACHE_FIELD)


def cache_argument(cache: Any, past_key_values: Any) -> Any:
    """The cache passed to forward as `cache` (transformers >= 5.24) or `past_key_values` (earlier)."""
    if past_key_values is None:
        return cache
    if cache is not None:
        raise ValueError("pass the cache as `cache` or as `past_key_values`, not both")
    return past_key_values
