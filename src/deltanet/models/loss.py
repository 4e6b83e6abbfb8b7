"""Next-token cross-entropy with the label shift done here, not by the caller."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deltanet.layers.precision import compute_dtype

IGNORE_INDEX = -100


def causal_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignored_targets: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross-entropy of predicting labels[:, t + 1] from logits[:, t], in float32 (float64 if float64).

    Args:
        logits: [B, T, vocab], any float dtype.
        labels: int [B, T], aligned with the inputs (not shifted); IGNORE_INDEX (-100) is skipped.
        ignored_targets: bool [B, T] or None; True marks labels that must not be predicted either:
            padding, and the first token of a packed document (it does not follow from the previous one).

    Returns:
        A scalar, the mean over the targets that count (NaN if none does).
    """
    targets = labels[:, 1:]
    if ignored_targets is not None:
        targets = targets.masked_fill(ignored_targets[:, 1:], IGNORE_INDEX)
    return F.cross_entropy(
        logits[:, :-1].to(compute_dtype(logits)).reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
    )
