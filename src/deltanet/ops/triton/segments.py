"""The sequential state passes split into segments that run in parallel (long sequences, few heads).

The state pass is affine in the state it starts from: over a run of chunks,

    forward   S_end   = M S_start + R,     M = prod_c (I - K_c^T W_c)   (latest chunk on the left)
    backward  G_start = M' G_end + R',     M' = prod_c (I - W_c^T K_c)  (earliest chunk on the left)

where R (R') is what the pass produces from a zero state. So each sequence is cut into segments of
`segment_chunks` chunks and the pass runs in three steps:
  1. per segment, in parallel: R from a zero state, and M by running the same kernel on the identity
     (a K x K "state" with zero values: no U in the forward, no dO in the backward);
  2. per sequence, sequentially over its few segments (batched matrix products in PyTorch):
     each segment's true starting (ending) state;
  3. per segment, in parallel: the pass again from that state, now writing its outputs.
Three passes of 1/G the length replace one of full length: a gain when the state pass has too few
programs to fill the card (B * H small, T long), and a loss otherwise.

Segments are described like packed sequences (cu_seqlens over the flat token axis, chunk_offsets into
the global chunk numbering), so the state kernels need no new indexing.
"""

from __future__ import annotations

import torch

from deltanet.ops.host_offsets import host_offsets
from deltanet.ops.triton.common import LAUNCH, cdiv, multiprocessor_count
from deltanet.ops.triton.state import launch_state_bwd, launch_state_fwd, state_bwd, state_fwd, value_block


class Segments:
    """Each sequence cut into segments of `segment_chunks` chunks (the last may be shorter; an empty
    sequence keeps one empty segment), described like packed sequences.

    cu_seqlens: int32 [S + 1] token bounds of the S segments on the flat token axis.
    chunk_offsets: int32 [S] global index of each segment's first chunk (chunks keep the sequences'
        own numbering, so h and dh come out laid out as without segments).
    first, count: per sequence, its first segment and number of segments (host lists).
    """

    def __init__(self, cu_seqlens, batch, seq_len, chunk_size, segment_chunks, device):
        if cu_seqlens is None:
            bounds = [(n * seq_len, (n + 1) * seq_len) for n in range(batch)]
        else:
            offsets = host_offsets(cu_seqlens)
            bounds = list(zip(offsets[:-1], offsets[1:]))
        tokens_per_segment = segment_chunks * chunk_size
        starts, chunk_starts, self.first, self.count = [], [], [], []
        chunks_before = 0
        for bos, eos in bounds:
            count = max(1, cdiv(eos - bos, tokens_per_segment))
            self.first.append(len(starts))
            self.count.append(count)
            starts += [bos + g * tokens_per_segment for g in range(count)]
            chunk_starts += [chunks_before + g * segment_chunks for g in range(count)]
            chunks_before += cdiv(eos - bos, chunk_size)
        self.num_segments = len(starts)
        # The composition's index lists (sequences, segments) per step, forwards then backwards.
        steps = []
        for reverse in (False, True):
            for g in range(max(self.count)):
                seqs = [n for n, c in enumerate(self.count) if c > g]
                segs = [self.first[n] + (self.count[n] - 1 - g if reverse else g) for n in seqs]
                steps.append((seqs, segs))
        # One upload for everything (each host-to-device copy from a Python list waits for the stream).
        flat = starts + [bounds[-1][1]] + chunk_starts + [i for seqs, segs in steps for i in seqs + segs]
        table = torch.tensor(flat, dtype=torch.int32, device=device)
        S = self.num_segments
        self.cu_seqlens, self.chunk_offsets = table[: S + 1], table[S + 1 : 2 * S + 1]
        self._steps, offset = [], 2 * S + 1
        for seqs, segs in steps:
            n = len(seqs)
            self._steps.append((table[offset : offset + n].long(), table[offset + n : offset + 2 * n].long()))
            offset += 2 * n

    def in_order(self, reverse=False):
        """Step g = 0, 1, ...: (the sequences that have a g-th segment, the index of that segment) as index
        tensors, counting segments from each sequence's end when reverse."""
        half = len(self._steps) // 2
        return self._steps[half:] if reverse else self._steps[:half]


def segment_chunks_for(V, K, num_seqs, H, longest_chunks, device):
    """Chunks per segment, or None to run the state passes whole (see the module docstring)."""
    segment_chunks = LAUNCH["state"]["segment_chunks"]
    if segment_chunks is None or longest_chunks <= segment_chunks:
        return None
    BV = value_block(V, K, num_seqs, H, device)
    if num_seqs * H * cdiv(V, BV) >= multiprocessor_count(device):
        return None  # the card is already full: three passes would cost more than they save
    return segment_chunks


def _compose(segments, M, R, start, reverse):
    """Walk each sequence's segments (backwards if reverse): entry[g] = x; x = M[g] @ x + R[g].

    M [S, H, K, K], R [S, H, K, V], start [N, H, K, V], all float32
    -> (entry [S, H, K, V], x after each sequence's last step [N, H, K, V])."""
    entry = torch.empty_like(R)
    x = start.clone()
    for seqs, segs in segments.in_order(reverse):
        current = x[seqs]
        entry[segs] = current
        x[seqs] = torch.matmul(M[segs], current) + R[segs]
    return entry, x


def segmented_state_fwd(k, w, u, initial_state, output_final_state, cu_seqlens, num_seqs, num_chunks, seq_len,
                        chunk_size, dot_precision, segment_chunks, q=None, scale=1.0, out_dtype=None):
    """Same contract as state.state_fwd, in segments run in parallel."""
    H, K, V = k.shape[2], k.shape[3], u.shape[3]
    seg = Segments(cu_seqlens, k.shape[0], seq_len, chunk_size, segment_chunks, k.device)
    S = seg.num_segments
    common = dict(cu_seqlens=seg.cu_seqlens, chunk_offsets=seg.chunk_offsets, num_seqs=S, seq_len=seq_len,
                  chunk_size=chunk_size, dot_precision=dot_precision)
    R = k.new_empty(S, H, K, V, dtype=torch.float32)
    launch_state_fwd(k, w, u, V, None, R, **common)
    M = k.new_empty(S, H, K, K, dtype=torch.float32)
    launch_state_fwd(k, w, None, K, None, M, identity_start=True, **common)
    if initial_state is None:
        initial_state = k.new_zeros(num_seqs, H, K, V, dtype=torch.float32)
    entry, final_state = _compose(seg, M, R, initial_state.float(), reverse=False)
    del M, R
    # The pass again from each segment's true start: (o, None) fused, else (h, U~), as state_fwd gives.
    first, second, _ = state_fwd(k, w, u, entry, False, seg.cu_seqlens, seg.chunk_offsets, S, num_chunks,
                                 seq_len, chunk_size, dot_precision, q=q, scale=scale, out_dtype=out_dtype)
    return first, second, (final_state if output_final_state else None)


def segmented_state_bwd(q, k, w, do, final_state_grad, need_initial_state_grad, scale, cu_seqlens, num_seqs,
                        num_chunks, seq_len, chunk_size, dot_precision, segment_chunks):
    """Same contract as state.state_bwd, in segments run in parallel."""
    H, K, V = q.shape[2], q.shape[3], do.shape[3]
    seg = Segments(cu_seqlens, q.shape[0], seq_len, chunk_size, segment_chunks, q.device)
    S = seg.num_segments
    common = dict(cu_seqlens=seg.cu_seqlens, chunk_offsets=seg.chunk_offsets, num_seqs=S, seq_len=seq_len,
                  chunk_size=chunk_size, dot_precision=dot_precision, scale=scale)
    R = q.new_empty(S, H, K, V, dtype=torch.float32)
    launch_state_bwd(q, k, w, do, V, None, R, **common)
    M = q.new_empty(S, H, K, K, dtype=torch.float32)
    launch_state_bwd(q, k, w, None, K, None, M, identity_start=True, **common)
    end = final_state_grad.float() if final_state_grad is not None else q.new_zeros(num_seqs, H, K, V,
                                                                                     dtype=torch.float32)
    exit_grad, dh0 = _compose(seg, M, R, end, reverse=True)
    del M, R
    dh, du_tilde, _ = state_bwd(q, k, w, do, exit_grad, False, scale, seg.cu_seqlens, seg.chunk_offsets, S,
                                num_chunks, seq_len, chunk_size, dot_precision)
    return dh, du_tilde, (dh0 if need_initial_state_grad else None)
