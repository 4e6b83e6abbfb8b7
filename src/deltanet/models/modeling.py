"""DeltaNetModel and DeltaNetForCausalLM: Hugging Face models over the blocks of deltanet.layers.

    input_ids [B, T] -> embedding -> N x TransformerBlock(mixer_i) -> RMSNorm -> (lm_head) -> logits

The mixer of each layer comes from config.mixer_types (DeltaNet, linear attention or softmax attention).
One DeltaNetCache holds every layer's state for decoding; padding (attention_mask), packed documents
(cu_seqlens or restarting position_ids) and positions are turned into one SequenceInfo per forward
(inputs.py) that every layer reads. Weights are saved and loaded as safetensors by PreTrainedModel.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from deltanet.layers import (
    Attention,
    DeltaNet,
    LinearAttention,
    RMSNorm,
    ShortConvolution,
    TokenMixer,
    TransformerBlock,
)
from deltanet.layers.sequence_info import SequenceInfo
from deltanet.models.cache import DeltaNetCache
from deltanet.models.configuration import DeltaNetConfig
from deltanet.models.hf_compat import CACHE_FIELD, cache_argument, output_cache
from deltanet.models.inputs import document_starts, packed_documents, padding_mask, sequence_info_for
from deltanet.models.loss import causal_lm_loss


def build_mixer(config: DeltaNetConfig, layer_idx: int) -> TokenMixer:
    """The token mixer of layer `layer_idx`, as config.mixer_types says."""
    kind = config.mixer_types[layer_idx]
    shape = dict(hidden_size=config.hidden_size, num_heads=config.num_heads, head_dim=config.head_dim)
    if kind == "attn":
        return Attention(
            **shape, layer_idx=layer_idx, window=config.attn_window, rope_theta=config.rope_theta
        )
    recurrent = dict(
        **shape,
        layer_idx=layer_idx,
        use_short_conv=config.use_short_conv,
        conv_size=config.conv_size,
        use_output_gate=config.use_output_gate,
        norm_eps=config.norm_eps,
        chunk_size=config.chunk_size,
        backend=config.backend,
    )
    if kind == "linear_attn":
        return LinearAttention(**recurrent)
    return DeltaNet(**recurrent, allow_neg_eigval=config.allow_neg_eigval, allow_tf32=config.allow_tf32)


class DeltaNetPreTrainedModel(PreTrainedModel):
    """Weight init and the Hugging Face plumbing shared by the DeltaNet models."""

    config_class = DeltaNetConfig
    config: DeltaNetConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["TransformerBlock"]
    # Activation checkpointing per block: `model.gradient_checkpointing_enable()` (Hugging Face) or
    # DeltaNetModel.gradient_checkpointing = True.
    supports_gradient_checkpointing = True
    # Recurrent states cannot be rolled back, so generate() must not try assisted decoding.
    _is_stateful = True

    def _init_weights(self, module: nn.Module) -> None:
        """Linear and embedding weights ~ N(0, initializer_range), norms at one (transformers' defaults);
        short convs uniform in +-1/sqrt(width), as nn.Conv1d."""
        super()._init_weights(module)
        if isinstance(module, ShortConvolution):
            bound = module.kernel_size**-0.5
            init.uniform_(module.weight, -bound, bound)


class DeltaNetModel(DeltaNetPreTrainedModel):
    """Embedding, blocks and final norm; returns hidden states [B, T, hidden_size] and the cache."""

    def __init__(self, config: DeltaNetConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            TransformerBlock(
                build_mixer(config, i), config.hidden_size, config.intermediate_size, config.norm_eps
            )
            for i in range(config.num_hidden_layers)
        )
        # The final norm's output is returned (last_hidden_state): it keeps the residual stream's dtype.
        self.norm = RMSNorm(config.hidden_size, eps=config.norm_eps, autocast_output=False)
        # True: in training, each block's activations are recomputed in the backward pass instead of kept
        # (memory of one block instead of all, for about one more forward pass of compute)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def new_cache(self) -> DeltaNetCache:
        """An empty cache with the entry each layer allocates for itself."""
        return DeltaNetCache([block.mixer.new_cache_entry() for block in self.layers])

    def _resolve_cache(self, cache: DeltaNetCache | None, use_cache: bool | None, info: SequenceInfo):
        """The cache this forward reads and updates, or None."""
        if use_cache is None:
            use_cache = cache is not None or (
                self.config.use_cache and not self.training and not info.is_packed
            )
        if not use_cache:
            return None
        if info.is_packed:  # explicitly asked for: per-document states do not fit a per-row cache
            raise ValueError("use_cache=True cannot be combined with packed documents")
        return self.new_cache() if cache is None else cache

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: DeltaNetCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        cu_seqlens: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: DeltaNetCache | None = None,
        max_seqlen: int | None = None,
    ) -> BaseModelOutputWithPast | tuple:
        """Run the blocks over [B, T] tokens.

        Args:
            input_ids: int [B, T]; or inputs_embeds [B, T, hidden_size] instead.
            attention_mask: [B, past + T] or [B, T], 0 at padding (left or right); last T columns used.
            position_ids: int [B or 1, T] rotary positions; restarts at 0 inside a row (without
                padding) mark packed documents. Default: counted from the cache and the mask.
            cache: DeltaNetCache to continue from and update (model.new_cache()).
            use_cache: return a cache; default config.use_cache in eval mode, never for packed input.
            cu_seqlens: int [N + 1], documents packed in a single row (B = 1).
            max_seqlen: with cu_seqlens, the longest document's length or a bound of it (e.g. the length of
                the rows that were packed), as in FlashAttention's varlen API; lets the layers that pad
                documents to one length (linear attention) run without a host read or, under torch.compile,
                a data-dependent shape.
            output_hidden_states: also return the input of every block and the final output.
            past_key_values: the name transformers < 5.24 gives `cache` (see hf_compat.py).

        Returns the cache as `cache` (transformers >= 5.24) or `past_key_values`: see `output_cache`.
        """
        cache = cache_argument(cache, past_key_values)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        hidden_states = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        batch_size, seq_len = hidden_states.shape[:2]
        if cache is not None and not isinstance(cache, DeltaNetCache):
            raise TypeError(f"cache must be a DeltaNetCache (model.new_cache()), got {type(cache).__name__}")
        info, flatten_rows = sequence_info_for(
            batch_size, seq_len, hidden_states.device, attention_mask, position_ids, cu_seqlens, cache,
            max_seqlen,
        )
        cache = self._resolve_cache(cache, use_cache, info)
        if flatten_rows:  # packed rows laid end to end: [B, T, D] -> [1, B * T, D]
            hidden_states = hidden_states.reshape(1, batch_size * seq_len, -1)

        all_hidden_states = []
        # (not with a cache: the recomputation would update it a second time)
        checkpointing = (self.gradient_checkpointing and self.training and torch.is_grad_enabled()
                         and cache is None)
        for block in self.layers:
            all_hidden_states.append(hidden_states)
            if checkpointing:
                hidden_states = activation_checkpoint(block, hidden_states, info, cache, use_reentrant=False)
            else:
                hidden_states = block(hidden_states, info, cache)
        hidden_states = self.norm(hidden_states)
        all_hidden_states.append(hidden_states)
        if cache is not None:
            cache.advance(batch_size, seq_len, info.token_mask, hidden_states.device)

        hidden_states = hidden_states.view(batch_size, seq_len, -1)
        want_hidden = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        output = BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            **{CACHE_FIELD: cache},
            hidden_states=tuple(h.view(batch_size, seq_len, -1) for h in all_hidden_states)
            if want_hidden
            else None,
        )
        return output if return_dict is not False else output.to_tuple()


class DeltaNetForCausalLM(DeltaNetPreTrainedModel, GenerationMixin):
    """DeltaNetModel with a language-model head; computes the shifted next-token loss from `labels`."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: DeltaNetConfig) -> None:
        super().__init__(config)
        self.model = DeltaNetModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # generate() must not build a transformers DynamicCache: the first forward creates a DeltaNetCache.
        return False

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def new_cache(self) -> DeltaNetCache:
        return self.model.new_cache()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: DeltaNetCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        cu_seqlens: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: DeltaNetCache | None = None,
        max_seqlen: int | None = None,
    ) -> CausalLMOutputWithPast | tuple:
        """DeltaNetModel.forward's arguments, plus:

        labels: int [B, T] aligned with input_ids (the model shifts them); -100 is ignored, and so are
            targets at padding and at the first token of each packed document.
        logits_to_keep: if > 0, logits only for the last that many positions (generate uses 1).

        Returns logits [B, T or logits_to_keep, vocab] in the model's dtype, the loss (float32, float64 for
        float64 models) and the cache (read it with `output_cache`).
        """
        if labels is not None and logits_to_keep:
            raise ValueError("labels need logits at every position; leave logits_to_keep at 0")
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache_argument(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            cu_seqlens=cu_seqlens,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            max_seqlen=max_seqlen,
        )
        hidden_states = outputs.last_hidden_state
        if logits_to_keep:
            hidden_states = hidden_states[:, -logits_to_keep:]
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = causal_lm_loss(
                logits, labels, self._ignored_targets(labels, attention_mask, position_ids, cu_seqlens)
            )
        output = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            **{CACHE_FIELD: output_cache(outputs)},
        )
        return output if return_dict is not False else output.to_tuple()

    @staticmethod
    def _ignored_targets(labels, attention_mask, position_ids, cu_seqlens) -> torch.Tensor | None:
        """bool [B, T]: padding tokens and first tokens of packed documents are no prediction targets."""
        batch_size, seq_len = labels.shape
        token_mask = padding_mask(attention_mask, batch_size, seq_len)
        if token_mask is not None:
            return ~token_mask
        packed, _ = packed_documents(batch_size, seq_len, position_ids, cu_seqlens, None)
        return None if packed is None else document_starts(packed, batch_size, seq_len)
