"""Triton kernels for the delta rule (GPU; also run on the CPU under TRITON_INTERPRET=1 for tests).

Forward:   wy.py      W = T K, U = T V per chunk (UT transform, chunk-parallel)
           state.py   the sequential pass over chunks: U~ = U - W h per chunk, and either the
                      outputs directly (fused) or the per-chunk states h and U~ for ...
           output.py  ... O = scale (Q h + tril(Q K^T) U~)  (chunk-parallel)
Backward:  in training the forward kept W, U, (I + A)^-1, h and U~ (LAUNCH["backward"]["saved"]);
           with "inputs" it kept only q, k, v, beta, the initial state and cu_seqlens, and wy.py and
           state.py run again first; then
           state.py   the reverse pass: state gradients dh, dU~
           backward.py  dq, dk, dv, dbeta per chunk, through the UT transform (two launches)
Decoding:  recurrent.py  token-by-token steps against a cached state
common.py holds the indexing helpers, the inverse and the launch settings, and chunk.py registers the
chunked forward and backward as PyTorch custom ops.
"""
