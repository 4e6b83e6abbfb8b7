"""Held-out evaluation during training (loss and bits per byte) and the sample printed at the end of a run."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F

from deltanet.models import DeltaNetForCausalLM


def counted_targets_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """bool [m, T - 1]: which next-token targets of packed rows count. Each token but the last predicts the
    next one, except where the next one starts a document (position 0): it does not follow from the previous
    document."""
    return position_ids[:, 1:] != 0


def target_bytes(tokenizer, input_ids: torch.Tensor, position_ids: torch.Tensor) -> int:
    """UTF-8 bytes of the text that the counted targets of rows [m, T] stand for (the denominator of bits per
    byte). Runs of consecutive targets are measured together, so that tokenizers whose tokens carry a
    leading space (SentencePiece, byte-level BPE) are counted as in running text."""
    total = 0
    counted = counted_targets_mask(position_ids)
    for row, mask in zip(input_ids[:, 1:].tolist(), counted.tolist()):
        run: list[int] = []
        for token, keep in zip(row + [0], mask + [False]):  # a sentinel closes the last run
            if keep:
                run.append(token)
            elif run:
                total += tokenizer.count_bytes(run)
                run = []
    return total


@torch.no_grad()
def held_out_nll(model: DeltaNetForCausalLM, input_ids: torch.Tensor, position_ids: torch.Tensor,
                 micro_batch: int, device: torch.device,
                 autocast: Callable[[], AbstractContextManager]) -> tuple[float, int]:
    """(sum of the negative log-likelihoods in nats, number of counted targets) of packed rows [N, T]."""
    was_training = model.training
    model.eval()
    nll_sum, targets = 0.0, 0
    for start in range(0, input_ids.shape[0], micro_batch):
        ids = input_ids[start:start + micro_batch].to(device)
        positions = position_ids[start:start + micro_batch].to(device)
        with autocast():
            logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits
        counted = counted_targets_mask(positions)
        nll = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
        nll_sum += float((nll.view_as(counted) * counted).sum())
        targets += int(counted.sum())
    model.train(was_training)
    return nll_sum, targets


def bits_per_byte(nll_sum: float, num_bytes: int) -> float:
    return nll_sum / math.log(2) / max(num_bytes, 1)


@torch.no_grad()
def generate_sample(model: DeltaNetForCausalLM, tokenizer, prompt: str, num_tokens: int, seed: int,
                    device: torch.device, autocast: Callable[[], AbstractContextManager]) -> str:
    """Text sampled after the prompt (temperature 0.8, top-p 0.95), seeded; the random generators' states
    are restored afterwards."""
    ids = tokenizer.encode(prompt) or [0]
    model.eval()
    cpu_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    torch.manual_seed(seed)
    inputs = torch.tensor([ids], device=device)
    with autocast():
        out = model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=num_tokens,
                             do_sample=True, temperature=0.8, top_p=0.95, top_k=0, pad_token_id=0)
    torch.set_rng_state(cpu_state)
    if cuda_states is not None:
        torch.cuda.set_rng_state_all(cuda_states)
    return tokenizer.decode(out[0, len(ids):].tolist())
