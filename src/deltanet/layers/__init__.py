"""Layers (nn.Modules) built on deltanet.ops: token mixers, norms, the MLP and the Transformer++ block.

Every token mixer follows one inference protocol (mixer.py): it knows its layer index, allocates its
own cache entry, and handles prefill and single-token decoding through the same forward, given the
hidden states and a SequenceInfo (positions, padding, packed documents).
"""

from deltanet.layers.attention import Attention
from deltanet.layers.block import TransformerBlock
from deltanet.layers.cache_entries import CacheEntry, KVCacheEntry, RecurrentCacheEntry
from deltanet.layers.conv import ShortConvolution
from deltanet.layers.delta_net import DeltaNet
from deltanet.layers.linear_attention import LinearAttention, chunk_linear_attention
from deltanet.layers.mixer import TokenMixer
from deltanet.layers.mlp import SwiGLU
from deltanet.layers.norm import GatedRMSNorm, RMSNorm
from deltanet.layers.recurrent_mixer import LinearRecurrentMixer
from deltanet.layers.rotary import apply_rotary, rotary_cos_sin
from deltanet.layers.sequence_info import SequenceInfo

__all__ = [
    "Attention",
    "CacheEntry",
    "DeltaNet",
    "GatedRMSNorm",
    "KVCacheEntry",
    "LinearAttention",
    "LinearRecurrentMixer",
    "RMSNorm",
    "RecurrentCacheEntry",
    "SequenceInfo",
    "ShortConvolution",
    "SwiGLU",
    "TokenMixer",
    "TransformerBlock",
    "apply_rotary",
    "chunk_linear_attention",
    "rotary_cos_sin",
]
