"""The delta rule, token by token: the specification every faster path is checked against.

Per head, with key-major state S [K, V]:

    S_t = S_{t-1} + beta_t * k_t (v_t - S_{t-1}^T k_t)^T
    o_t = scale * S_t^T q_t                      (the output reads the state after the update at t)

This is a plain PyTorch loop over time: slow, obviously correct, differentiable by autograd. It is the
reference for tests and the path for decoding a few tokens against a cached state.
"""

from __future__ import annotations

import torch

from deltanet.ops.backends import BACKENDS, check_triton_dtype, default_backend
from deltanet.ops.host_offsets import host_offsets
from deltanet.ops.l2norm import l2_normalize
from deltanet.ops.validation import check_delta_rule_inputs, resolve_scale, state_dtype_for


def _recurrent_one_sequence(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, scale: float, state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k [B, T, H, K]; v [B, T, H, V]; beta [B, T, H]; state [B, H, K, V], all in the compute dtype.

    Returns o [B, T, H, V] and the final state [B, H, K, V].
    """
    outputs = []
    for t in range(q.shape[1]):
        # [B, H, K], [B, H, V], [B, H, K], [B, H]
        k_t, v_t, q_t, beta_t = k[:, t], v[:, t], q[:, t], beta[:, t]
        predicted = torch.einsum("bhk,bhkv->bhv", k_t, state)  # S_{t-1}^T k_t
        delta = beta_t[..., None] * (v_t - predicted)  # [B, H, V]
        state = state + k_t[..., :, None] * delta[..., None, :]  # rank-one update, [B, H, K, V]
        outputs.append(scale * torch.einsum("bhk,bhkv->bhv", q_t, state))
    return torch.stack(outputs, dim=1), state


def recurrent_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    use_qk_l2norm: bool = False,
    backend: str | None = None,
    update_state_in_place: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The delta rule computed token by token: the reference implementation, and the decoding step.

    Args:
        q, k: queries and keys, [B, T, H, K], any float dtype.
        v: values, [B, T, H, V].
        beta: write strengths, [B, T, H] (beta in [0, 2] keeps the state bounded for unit-norm keys).
        scale: output scale, defaults to K ** -0.5.
        initial_state: [N, H, K, V] state before the first token, N = B or the number of sequences in
            cu_seqlens; None means zeros.
        output_final_state: also return the state after the last token.
        cu_seqlens: int32/int64 [N + 1] cumulative lengths of sequences packed along T (B must be 1);
            sequences never share state.
        use_qk_l2norm: L2-normalise q and k over K first (gradients flow through the normalisation).
        backend: None picks the Triton kernel for CUDA tensors (not float64) when no gradient is needed
            (decoding), else the PyTorch loop; "torch" or "triton" force one. The Triton kernel has no
            backward.
        update_state_in_place: Triton only: write the final state into initial_state (float32,
            contiguous) instead of allocating one; returned as the final state.

    Returns:
        o [B, T, H, V] in v's dtype, and the final state [N, H, K, V] (float32, or float64 for float64
        inputs) or None. Arithmetic runs in float32, or float64 when all inputs are float64.
    """
    shape = check_delta_rule_inputs(q, k, v, beta, initial_state, cu_seqlens)
    scale = resolve_scale(scale, shape.key_dim)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, beta, initial_state)
    )
    if backend is None:
        backend = "triton" if default_backend(q.device, v.dtype) == "triton" and not needs_grad else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be None or one of {BACKENDS}, got {backend!r}")
    if use_qk_l2norm:  # the PyTorch path stays PyTorch throughout: it is the reference
        norm_backend = "torch" if backend == "torch" else None
        q, k = l2_normalize(q, backend=norm_backend), l2_normalize(k, backend=norm_backend)
    if backend == "triton":
        check_triton_dtype(v, "v")
        if needs_grad:
            raise ValueError("backend='triton' of recurrent_delta_rule has no backward (it is the decoding "
                             "step); use backend='torch', chunk_delta_rule, or torch.no_grad()")
        from deltanet.ops.triton.recurrent import recurrent_delta_rule_triton

        return recurrent_delta_rule_triton(
            q, k, v, beta, scale, initial_state, output_final_state, cu_seqlens, update_state_in_place
        )
    if update_state_in_place:
        raise ValueError(
            "update_state_in_place=True needs backend='triton' (the PyTorch path returns a new state)"
        )
    compute_dtype = state_dtype_for(q, k, v, beta)
    qc, kc, vc, bc = (t.to(compute_dtype) for t in (q, k, v, beta))
    N, H, K, V = shape.num_sequences, shape.num_heads, shape.key_dim, shape.value_dim
    if initial_state is None:
        state0 = q.new_zeros(N, H, K, V, dtype=compute_dtype)
    else:
        state0 = initial_state.to(compute_dtype)

    if cu_seqlens is None:
        o, final_state = _recurrent_one_sequence(qc, kc, vc, bc, scale, state0)
    else:
        offsets = host_offsets(cu_seqlens)
        pieces, finals = [], []
        for n, (start, end) in enumerate(zip(offsets[:-1], offsets[1:])):
            if end == start:  # an empty sequence keeps its initial state
                finals.append(state0[n])
                continue
            piece = slice(start, end)
            o_n, s_n = _recurrent_one_sequence(
                qc[:, piece], kc[:, piece], vc[:, piece], bc[:, piece], scale, state0[n : n + 1]
            )
            pieces.append(o_n)
            finals.append(s_n[0])
        o = torch.cat(pieces, dim=1)
        final_state = torch.stack(finals, dim=0)
    return o.to(v.dtype), (final_state if output_final_state else None)
