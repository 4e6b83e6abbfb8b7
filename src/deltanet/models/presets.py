"""Named configurations: the paper's architectures at its model sizes, plus a tiny debug size.

A preset name is "<architecture>-<size>", for example "deltanet-340m" or "deltanet-swa-debug":

    architectures  deltanet          every layer DeltaNet
                   deltanet-swa      sliding-window attention in every other layer (1, 3, 5, ...)
                   deltanet-global   global attention in the second and the (N/2 + 1)-th layer (1 and N // 2)
                   transformer++     every layer global softmax attention (the baseline)
                   linear-attn       every layer plain linear attention (the baseline)
    sizes          340m              24 layers, hidden 1024, 8 heads of 128
                   1.3b              24 layers, hidden 2048, 16 heads of 128
                   small             8 layers, hidden 512, 4 heads of 128, vocab 256: ~27M parameters, the
                                     size of the language-modelling comparison (deltanet.eval.compare)
                   mini              4 layers, hidden 128, 4 heads of 32, vocab 256: trains on a laptop's
                                     CPU in minutes (the default of `deltanet train`)
                   debug             4 layers, hidden 64, 2 heads of 32, vocab 256: for fast loops and tests

The attention layers follow num_hidden_layers when it is overridden. The sliding window is 2048
tokens at the paper sizes, 512 at the small size, 64 at mini and 16 at debug; override it with attn_window.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from deltanet.models.configuration import DeltaNetConfig

SIZES: dict[str, dict[str, Any]] = {
    "340m": dict(vocab_size=32000, hidden_size=1024, num_hidden_layers=24, num_heads=8, head_dim=128),
    "1.3b": dict(vocab_size=32000, hidden_size=2048, num_hidden_layers=24, num_heads=16, head_dim=128),
    "small": dict(vocab_size=256, hidden_size=512, num_hidden_layers=8, num_heads=4, head_dim=128),
    "mini": dict(
        vocab_size=256, hidden_size=128, num_hidden_layers=4, num_heads=4, head_dim=32, intermediate_size=352
    ),
    "debug": dict(
        vocab_size=256, hidden_size=64, num_hidden_layers=4, num_heads=2, head_dim=32, intermediate_size=128
    ),
}
SLIDING_WINDOWS = {"340m": 2048, "1.3b": 2048, "small": 512, "mini": 64, "debug": 16}

# architecture -> (num_hidden_layers, size name) -> its fields
ARCHITECTURES: dict[str, Callable[[int, str], dict[str, Any]]] = {
    "deltanet": lambda num_layers, size: dict(mixer="deltanet", attn_layers=[]),
    "deltanet-swa": lambda num_layers, size: dict(
        mixer="deltanet", attn_layers=list(range(1, num_layers, 2)), attn_window=SLIDING_WINDOWS[size]
    ),
    "deltanet-global": lambda num_layers, size: dict(
        mixer="deltanet", attn_layers=sorted({min(1, num_layers - 1), num_layers // 2})
    ),
    "transformer++": lambda num_layers, size: dict(mixer="attn", attn_layers=[]),
    "linear-attn": lambda num_layers, size: dict(mixer="linear_attn", attn_layers=[]),
}

PRESET_NAMES = tuple(f"{arch}-{size}" for arch in ARCHITECTURES for size in SIZES)


def preset_config(name: str, **overrides: Any) -> DeltaNetConfig:
    """The DeltaNetConfig of a named preset, with any field overridden.

    Raises ValueError for an unknown preset (listing the valid names) or an unknown field.
    """
    if name not in PRESET_NAMES:
        raise ValueError(f"unknown preset {name!r}; valid names: {', '.join(PRESET_NAMES)}")
    known_fields = {f.name for f in dataclasses.fields(DeltaNetConfig)}
    unknown = sorted(set(overrides) - known_fields)
    if unknown:
        raise ValueError(f"unknown DeltaNetConfig fields in overrides: {unknown}")
    arch, size = name.rsplit("-", 1)
    fields = dict(SIZES[size])
    num_layers = overrides.get("num_hidden_layers", fields["num_hidden_layers"])
    fields.update(ARCHITECTURES[arch](num_layers, size))
    fields.update(overrides)
    return DeltaNetConfig(**fields)
