"""DeltaNetConfig: the Hugging Face configuration of DeltaNet language models and their hybrids.

Hybrids are data, not code: `mixer` names the token mixer of every layer, and `attn_layers` lists the
layers that use softmax attention instead (global, or a sliding window of `attn_window` tokens).
Named configurations of the paper (sizes, hybrids, baselines) are in presets.py.

transformers 5 turns config subclasses into keyword-only dataclasses, so fields are declared as
annotated class attributes and checked in `__post_init__`, right after construction.
"""

from __future__ import annotations

from transformers import PretrainedConfig

MIXERS = ("deltanet", "linear_attn", "attn")
BACKENDS = (None, "torch", "triton")
MAX_HEAD_DIM = 256  # the delta-rule ops support head dims up to 256


def default_intermediate_size(hidden_size: int) -> int:
    """SwiGLU width with the parameters of a 4x GELU MLP: 8/3 * hidden, rounded up to a multiple of 256."""
    return 256 * -(-(8 * hidden_size // 3) // 256)


class DeltaNetConfig(PretrainedConfig):
    """Configuration of DeltaNetModel / DeltaNetForCausalLM.

    Fields (besides the generic PretrainedConfig ones):
        vocab_size: tokens in the vocabulary.
        hidden_size: width of the residual stream.
        num_hidden_layers: number of blocks N.
        num_heads: heads H of every token mixer.
        head_dim: size D of each head (keys, values and queries); H * D need not equal hidden_size.
        mixer: token mixer of the layers not in attn_layers: "deltanet", "linear_attn" or "attn".
        attn_layers: 0-based indices of the layers that use softmax attention.
        attn_window: None for global attention, or the sliding window W of every attention layer
            (a query sees itself and the W - 1 tokens before it).
        use_short_conv: causal depthwise conv on q, k, v of DeltaNet / linear-attention layers.
        conv_size: width of that conv.
        allow_neg_eigval: beta = 2 sigmoid(.), so that the transition's eigenvalues span (-1, 1).
        use_output_gate: gated RMSNorm with an output gate on DeltaNet / linear-attention heads.
        intermediate_size: SwiGLU width; None means default_intermediate_size(hidden_size).
        norm_eps: epsilon of every RMSNorm.
        rope_theta: rotary base of the attention layers.
        initializer_range: std of the normal init of linear and embedding weights.
        tie_word_embeddings: share the input embedding with the output projection.
        chunk_size: chunk length of the chunkwise delta-rule op (a power of two).
        backend: backend of the recurrent layers' ops (the q/k/v feature op, the L2 norms, the delta-rule op):
            None (fastest available), "torch" or "triton".
        allow_tf32: the Triton kernels' products of float32 tensors in tf32 (default) or, if False, in
            full float32 (bf16/fp16 tensors, as under autocast, are unaffected).
        use_cache: return a cache from forward in eval mode by default.
    """

    model_type = "deltanet"
    attribute_map = {"num_attention_heads": "num_heads"}

    vocab_size: int = 32000
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_heads: int = 8
    head_dim: int = 128
    mixer: str = "deltanet"
    attn_layers: list[int] | None = None
    attn_window: int | None = None
    use_short_conv: bool = True
    conv_size: int = 4
    allow_neg_eigval: bool = False
    use_output_gate: bool = False
    intermediate_size: int | None = None
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    chunk_size: int = 64
    backend: str | None = None
    allow_tf32: bool = True
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2

    def __post_init__(self, **kwargs) -> None:
        self.attn_layers = [] if self.attn_layers is None else list(self.attn_layers)
        if self.intermediate_size is None and isinstance(self.hidden_size, int):
            self.intermediate_size = default_intermediate_size(self.hidden_size)
        super().__post_init__(**kwargs)
        self.validate_architecture()

    @property
    def mixer_types(self) -> list[str]:
        """The token mixer of each layer: "attn" for attn_layers, `mixer` elsewhere."""
        attention = set(self.attn_layers)
        return ["attn" if i in attention else self.mixer for i in range(self.num_hidden_layers)]

    def validate_architecture(self) -> None:
        """Raise ValueError or TypeError naming the first bad field. Also run by save_pretrained."""
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_heads", "head_dim",
                     "conv_size", "intermediate_size", "chunk_size"):  # fmt: skip
            _check_positive_int(name, getattr(self, name))
        for name in ("norm_eps", "rope_theta", "initializer_range"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"DeltaNetConfig.{name} must be a positive number, got {value!r}")
        for name in (
            "use_short_conv",
            "allow_neg_eigval",
            "use_output_gate",
            "tie_word_embeddings",
            "allow_tf32",
            "use_cache",
        ):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"DeltaNetConfig.{name} must be a bool, got {getattr(self, name)!r}")
        if self.mixer not in MIXERS:
            raise ValueError(f"DeltaNetConfig.mixer must be one of {MIXERS}, got {self.mixer!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"DeltaNetConfig.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.chunk_size & (self.chunk_size - 1):
            raise ValueError(f"DeltaNetConfig.chunk_size must be a power of two, got {self.chunk_size}")
        if self.head_dim > MAX_HEAD_DIM:
            raise ValueError(f"DeltaNetConfig.head_dim must be at most {MAX_HEAD_DIM}, got {self.head_dim}")
        for index in self.attn_layers:
            if (
                isinstance(index, bool)
                or not isinstance(index, int)
                or not 0 <= index < self.num_hidden_layers
            ):
                raise ValueError(
                    f"DeltaNetConfig.attn_layers must hold layer indices in [0, {self.num_hidden_layers}), "
                    f"got {self.attn_layers!r}"
                )
        if len(set(self.attn_layers)) != len(self.attn_layers):
            raise ValueError(f"DeltaNetConfig.attn_layers has repeated indices: {self.attn_layers!r}")
        if self.attn_window is not None:
            _check_positive_int("attn_window", self.attn_window)
        if "attn" in self.mixer_types and self.head_dim % 2:
            raise ValueError(
                f"DeltaNetConfig.head_dim must be even for rotary attention, got {self.head_dim}"
            )


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"DeltaNetConfig.{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"DeltaNetConfig.{name} must be >= 1, got {value}")
