"""How many MQAR associations a delta-rule state can hold, with everything else made ideal.

MQAR's recall step in a 2-layer model: the second layer writes each pair (key token, value token) into its
state, then each query (the key token again) reads its value back. Here that step runs alone, without the
parts a real model must learn first (the first layer's shift to the previous token, sharing the residual
stream with the current token): keys, queries, values and write strengths are free embeddings of the
tokens, the P pairs are written with the delta rule (deltanet.ops.chunk_delta_rule, PyTorch backend) into
H heads of D x D, each query reads S^T q per head, and a per-head RMSNorm and a linear layer (or, with
`--readout mlp`, a hidden SiLU layer and a linear one) score the values. Where this reaches ~100%, the
state's size is not what bounds a real model's accuracy at that (H, D, P); where it stays well below, the
state is a likely bound (likely, not proven: training finds a good memory, not necessarily the best).

    PYTHONPATH=src python3 benchmarks/mqar_memory_capacity.py --heads 2 --head-dim 32 --pairs 64

prints test accuracy as it trains and a last line with the final figures (CPU, 1 thread: a few minutes at
the defaults). `--rule linear` writes additively (S += beta k v^T), linear attention's memory, for contrast.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from deltanet.ops import chunk_delta_rule


class IdealMemory(nn.Module):
    """Per-token embeddings for keys/queries (key half of the vocabulary) and values (value half), one
    write strength per key token and head, a per-head RMSNorm and a readout over the values (linear, or
    with a hidden SiLU layer of 4x the state's read width)."""

    def __init__(self, num_keys: int, num_values: int, heads: int, head_dim: int, readout: str = "linear"):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.key = nn.Embedding(num_keys, heads * head_dim)
        self.query = nn.Embedding(num_keys, heads * head_dim)
        self.value = nn.Embedding(num_values, heads * head_dim)
        self.write_logit = nn.Embedding(num_keys, heads)
        nn.init.zeros_(self.write_logit.weight)  # beta = 0.5 at the start, as sigmoid of a fresh projection
        self.norm = nn.RMSNorm(head_dim)
        width = heads * head_dim
        if readout == "linear":
            self.readout = nn.Linear(width, num_values)
        else:  # a hidden layer first, as the MLP and output layer after a real model's mixer
            self.readout = nn.Sequential(nn.Linear(width, 4 * width), nn.SiLU(),
                                         nn.Linear(4 * width, num_values))

    def forward(self, keys: torch.Tensor, values: torch.Tensor, rule: str) -> torch.Tensor:
        """keys [B, P] (key ids), values [B, P] (value ids) -> logits [B, P, num_values] of each key's
        query."""
        B, P = keys.shape
        shape = (B, P, self.heads, self.head_dim)
        k = F.normalize(self.key(keys).view(shape), dim=-1)
        q = F.normalize(self.query(keys).view(shape), dim=-1)
        v = self.value(values).view(shape)
        beta = torch.sigmoid(self.write_logit(keys))  # [B, P, H]
        if rule == "delta":
            # only the state after the P writes is read (queries come after them), so q is a placeholder
            _, state = chunk_delta_rule(k, k, v, beta, output_final_state=True, backend="torch")
        else:  # additive: linear attention's memory
            state = torch.einsum("bphk,bphv->bhkv", k * beta[..., None], v)
        read = torch.einsum("bhkv,bphk->bphv", state, q)  # [B, P, H, D]
        return self.readout(self.norm(read).flatten(2))


def draw(num_examples: int, pairs: int, num_keys: int, num_values: int,
         generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """P distinct keys per row (ids 1 .. num_keys - 1, as MQAR leaves token 0 out) and values with
    replacement."""
    keys = torch.rand(num_examples, num_keys - 1, generator=generator).topk(pairs, dim=1).indices + 1
    values = torch.randint(0, num_values, (num_examples, pairs), generator=generator)
    return keys, values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", type=int, default=2, help="heads H (default: 2)")
    parser.add_argument("--head-dim", type=int, default=32,
                        help="key and value width D per head (default: 32)")
    parser.add_argument("--pairs", type=int, default=64, help="key-value pairs P per example (default: 64)")
    parser.add_argument("--vocab", type=int, default=512,
                        help="vocabulary: keys from its lower half, values from its upper half (default: "
                        "512; MQAR's 8192 needs more steps)")
    parser.add_argument("--rule", choices=["delta", "linear"], default="delta",
                        help="delta rule (default) or additive writes (linear attention)")
    parser.add_argument("--readout", choices=["linear", "mlp"], default="linear",
                        help="from the per-head reads to the values: linear (default) or with a hidden SiLU "
                        "layer")
    parser.add_argument("--steps", type=int, default=4000, help="training steps (default: 4000)")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per step (default: 32)")
    parser.add_argument("--lr", type=float, default=1e-2,
                        help="peak learning rate of a one-cycle schedule (default: 1e-2)")
    parser.add_argument("--eval-every", type=int, default=500, help="steps between test evaluations")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    args = parser.parse_args()
    if args.vocab // 2 - 1 < args.pairs:
        parser.error(f"--vocab {args.vocab}: its lower half (less token 0) must hold --pairs {args.pairs} "
                     "distinct keys")

    torch.manual_seed(args.seed)
    num_keys, num_values = args.vocab // 2, args.vocab - args.vocab // 2
    model = IdealMemory(num_keys, num_values, args.heads, args.head_dim, args.readout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.steps, pct_start=0.1)
    test = draw(500, args.pairs, num_keys, num_values, torch.Generator().manual_seed(args.seed + 1))
    start = time.perf_counter()
    accuracy = 0.0
    for step in range(1, args.steps + 1):
        keys, values = draw(args.batch_size, args.pairs, num_keys, num_values)
        loss = F.cross_entropy(model(keys, values, args.rule).flatten(0, 1), values.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % args.eval_every == 0 or step == args.steps:
            with torch.no_grad():
                accuracy = (model(*test, args.rule).argmax(-1) == test[1]).float().mean().item()
            print(f"[{time.perf_counter() - start:.0f} s] step {step}: loss {loss.item():.3f}, "
                  f"test accuracy {accuracy:.4f}", flush=True)
    print(f"{args.rule} rule, {args.heads} heads x {args.head_dim}, {args.readout} readout, {args.pairs} "
          f"pairs, vocabulary {args.vocab}: test accuracy {accuracy:.4f} after {args.steps} steps")


if __name__ == "__main__":
    main()
