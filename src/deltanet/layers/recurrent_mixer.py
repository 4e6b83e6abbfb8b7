"""The frame shared by DeltaNet and its linear-attention baseline, so that they differ only in the recurrence.

    x -> q, k, v = W_q x, W_k x, W_v x           (no bias)
      -> causal depthwise short conv on each      (optional, width conv_size)
      -> SiLU, split into H heads of size D, L2 norm of each q and k head
      -> recurrence over time (subclass)
      -> per-head RMSNorm, or RMSNorm(o) * silu(W_g x) with the output gate
      -> W_o

The cache entry holds the recurrent state and the three conv states ("conv_q", "conv_k", "conv_v").
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as module_hooks  # the global hooks (nn.modules.module.register_*)
from torch.nn.utils import parametrize

from deltanet.layers.cache_entries import RecurrentCacheEntry
from deltanet.layers.conv import ShortConvolution
from deltanet.layers.mixer import TokenMixer
from deltanet.layers.norm import GatedRMSNorm, RMSNorm
from deltanet.layers.sequence_info import SequenceInfo
from deltanet.ops import l2_normalize, qkv_features


class LinearRecurrentMixer(TokenMixer):
    """Base of the mixers whose state is a [K, V] matrix per head; subclasses define `recurrence`.

    Args:
        hidden_size: model width.
        num_heads, head_dim: H heads with key and value size D.
        layer_idx: index of this layer in the model (its cache entry).
        use_short_conv, conv_size: the causal depthwise conv on q, k and v, and its width.
        use_output_gate: gated RMSNorm with an output gate W_g x instead of a plain RMSNorm.
        norm_eps: epsilon of the output norm.
        backend: backend of the feature op and the L2 norms (and DeltaNet's delta-rule op; linear attention's
            recurrence is PyTorch only): None (fastest available), "torch" or "triton".
    """

    cache_entry_type = RecurrentCacheEntry
    projection_names = ("q", "k", "v")
    # Projections of the input besides q, k and v (a subclass's, e.g. DeltaNet's "b" for beta) that join
    # their matmul when it is fused and fuse_extra_projections is on; their outputs then reach `recurrence`
    # in `projected`. (One matmul instead of two, and no separate gradient to add into the input's.)
    extra_projection_names: tuple[str, ...] = ()
    fuse_extra_projections = True
    # With extra projections fused, the matmul's output width (3HD + E, e.g. 3080 for DeltaNet at 340M) is
    # padded with zero weight rows up to a multiple of this: an odd width can cost the GEMM more than the
    # padding's FLOPs (1 = no padding).
    fused_width_multiple = 64

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        head_dim: int,
        layer_idx: int,
        use_short_conv: bool = True,
        conv_size: int = 4,
        use_output_gate: bool = False,
        norm_eps: float = 1e-6,
        backend: str | None = None,
    ) -> None:
        super().__init__(layer_idx)
        self.backend = backend
        self.hidden_size, self.num_heads, self.head_dim = hidden_size, num_heads, head_dim
        self.use_short_conv, self.use_output_gate = use_short_conv, use_output_gate
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(hidden_size, inner, bias=False)
        self.k_proj = nn.Linear(hidden_size, inner, bias=False)
        self.v_proj = nn.Linear(hidden_size, inner, bias=False)
        if use_short_conv:
            self.q_conv = ShortConvolution(inner, conv_size, activation="silu")
            self.k_conv = ShortConvolution(inner, conv_size, activation="silu")
            self.v_conv = ShortConvolution(inner, conv_size, activation="silu")
        if use_output_gate:
            self.g_proj = nn.Linear(hidden_size, inner, bias=False)
            self.o_norm: nn.Module = GatedRMSNorm(head_dim, eps=norm_eps)
        else:
            self.o_norm = RMSNorm(head_dim, eps=norm_eps)
        self.o_proj = nn.Linear(inner, hidden_size, bias=False)

    def fused_projection_names(self) -> tuple[str, ...]:
        """The projections that one matmul computes when projections_fusable: q, k, v, and the extra ones
        when fuse_extra_projections."""
        return self.projection_names + (self.extra_projection_names if self.fuse_extra_projections else ())

    def projections_fusable(self) -> bool:
        """Whether one matmul against the concatenated weights of fused_projection_names equals calling those
        projections: only for plain nn.Linear modules with plain weights and no hooks or parametrizations (a
        LoRA adapter, a quantized linear or weight, a module hook must see its own call)."""
        if (module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks
                or module_hooks._global_backward_hooks or module_hooks._global_backward_pre_hooks):
            return False
        for name in self.fused_projection_names():
            proj = getattr(self, f"{name}_proj")
            if (type(proj) is not nn.Linear or type(proj.weight) is not nn.Parameter
                    or proj._forward_hooks or proj._forward_pre_hooks or proj._backward_hooks
                    or proj._backward_pre_hooks or parametrize.is_parametrized(proj)):
                return False
        return True

    def features(
        self, hidden_states: torch.Tensor, info: SequenceInfo, entry: RecurrentCacheEntry | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """q, k, v [B, T, H, D] after projection, short conv and SiLU, with q and k L2-normalised per head,
        and the outputs of the extra projections that joined the matmul ({} when none did).

        Without a conv state to continue from (training, scoring, the first prefill) the three projections
        (and the extra ones) run as one matmul against their concatenated weights (when projections_fusable),
        and the conv, SiLU and norms as one fused op (`qkv_features`, which passes the extra channels
        through) that rounds once after the norm; a cache entry then receives the conv states. Continuing
        from a conv state (decoding, a later prefill chunk), each projection goes through its own module and
        ShortConvolution, and the conv output is rounded to the compute dtype before the norm: in bf16 the
        two paths can differ by one rounding in q and k (in float32 they agree to roundoff;
        tests/test_layers.py checks decoding against a full forward).
        """
        batch, seq_len, _ = hidden_states.shape
        names = self.projection_names
        if self.use_short_conv and (entry is None or entry.get(f"conv_{names[0]}") is None):
            if entry is not None and info.is_packed:
                raise ValueError("conv state cannot be carried across packed documents (cu_seqlens)")
            projections = [getattr(self, f"{name}_proj") for name in names]
            extra_names = self.fused_projection_names()[len(names):]
            extras = [getattr(self, f"{name}_proj") for name in extra_names]
            padding = 0
            if self.projections_fusable():
                weights = [proj.weight for proj in projections + extras]
                if extras:
                    width = sum(w.shape[0] for w in weights)
                    padding = -width % self.fused_width_multiple
                    if padding:
                        weights.append(weights[0].new_zeros(padding, weights[0].shape[1]))
                weight = torch.cat(weights)
                qkv = F.linear(hidden_states, weight)  # [B, T, 3HD + E + padding]: extras at the end
            else:
                qkv, extras = torch.cat([proj(hidden_states) for proj in projections], dim=-1), []
            if info.token_mask is not None:
                qkv = qkv * info.token_mask[..., None].to(qkv.dtype)  # padding reads as zero input
            convs: list[ShortConvolution] = [getattr(self, f"{name}_conv") for name in names]
            inner = self.num_heads * self.head_dim
            if entry is not None:
                for name, conv, x in zip(names, convs, qkv[..., : 3 * inner].chunk(3, dim=-1)):
                    entry.set(f"conv_{name}", conv.state_after(x, info.token_mask))
            conv_weight = torch.cat([conv.weight[:, 0] for conv in convs])  # [3 H D, W]
            passthrough = sum(proj.out_features for proj in extras) + padding
            q, k, v, *passed = qkv_features(qkv, conv_weight, self.num_heads, cu_seqlens=info.cu_seqlens,
                                            backend=self.backend, passthrough=passthrough)
            projected = {}
            if passthrough:
                sizes = [proj.out_features for proj in extras] + [padding]
                projected = dict(zip(extra_names, passed[0].split(sizes, dim=-1)))  # the padding dropped
            return q, k, v, projected
        outputs = []
        for name in names:
            x = getattr(self, f"{name}_proj")(hidden_states)  # [B, T, H * D]
            if self.use_short_conv:
                conv: ShortConvolution = getattr(self, f"{name}_conv")
                state = entry.get(f"conv_{name}")
                x, new_state = conv(x, info, state=state, return_state=True)
                entry.set(f"conv_{name}", new_state)
            else:
                x = F.silu(x)
            outputs.append(x.view(batch, seq_len, self.num_heads, self.head_dim))
        q, k, v = outputs
        return l2_normalize(q, backend=self.backend), l2_normalize(k, backend=self.backend), v, {}

    def recurrence(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        hidden_states: torch.Tensor,
        info: SequenceInfo,
        initial_state: torch.Tensor | None,
        output_final_state: bool,
        projected: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """q, k (L2-normalised), v [B, T, H, D] -> o [B, T, H, D] in v's dtype, and the final state
        [B, H, D, D] or None. projected: the extra projections' outputs computed with q, k and v, by name
        (absent when they were not: the subclass then calls its projection itself)."""
        raise NotImplementedError

    def forward(
        self, hidden_states: torch.Tensor, info: SequenceInfo, cache: Any | None = None
    ) -> torch.Tensor:
        """hidden_states [B, T, hidden_size] -> [B, T, hidden_size]; updates this layer's cache entry."""
        batch, seq_len, _ = hidden_states.shape
        entry = self.cache_entry(cache)
        q, k, v, projected = self.features(hidden_states, info, entry)
        initial_state = None if entry is None else entry.get("recurrent_state")
        o, final_state = self.recurrence(q, k, v, hidden_states, info, initial_state, entry is not None,
                                         projected)
        if entry is not None:
            entry.set("recurrent_state", final_state)
        if self.use_output_gate:
            gate = self.g_proj(hidden_states).view(batch, seq_len, self.num_heads, self.head_dim)
            o = self.o_norm(o, gate)
        else:
            o = self.o_norm(o)
        return self.o_proj(o.reshape(batch, seq_len, -1))
