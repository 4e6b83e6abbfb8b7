"""Hugging Face models: DeltaNetConfig, its presets, the cache, DeltaNetModel and DeltaNetForCausalLM.

Importing this package registers model_type "deltanet" with AutoConfig, AutoModel and
AutoModelForCausalLM (`import deltanet` does it), so that `AutoModelForCausalLM.from_config(config)`
and `from_pretrained(path)` build these classes.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from deltanet.models.cache import DeltaNetCache
from deltanet.models.configuration import DeltaNetConfig
from deltanet.models.hf_compat import output_cache
from deltanet.models.modeling import DeltaNetForCausalLM, DeltaNetModel, DeltaNetPreTrainedModel
from deltanet.models.presets import PRESET_NAMES, preset_config

# exist_ok: re-importing (e.g. importlib.reload in a notebook) must not fail.
AutoConfig.register(DeltaNetConfig.model_type, DeltaNetConfig, exist_ok=True)
AutoModel.register(DeltaNetConfig, DeltaNetModel, exist_ok=True)
AutoModelForCausalLM.register(DeltaNetConfig, DeltaNetForCausalLM, exist_ok=True)

__all__ = [
    "PRESET_NAMES",
    "DeltaNetCache",
    "DeltaNetConfig",
    "DeltaNetForCausalLM",
    "DeltaNetModel",
    "DeltaNetPreTrainedModel",
    "output_cache",
    "preset_config",
]
