"""Next-token cross-entropy with the label shift done here, not by the caller."""

from __future__ import annotations

import torch

from deltanet.ops.cross_entropy import cross_entropy

IGNORE_INDEX = -100


def causal_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignored_targets: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross-entropy of predicting labels[:, t + 1] from logits[:, t], in float32 (float64 if float64).

    Args:
        logits: [B, T, vocab], any float dtype (read as it is: no float32 copy on the GPU).
        labels: int [B, T], aligned with the inputs (not shifted); IGNORE_INDEX (-100) is skipped.
        ignored_targets: bool [B, T] or None; True marks labels that must not be predicted either:
            padding, and the first token of a packed document (it does not follow from the previous one).

    Returns:
        A scalar, the mean over the targets that count (NaN if none does).
    """
    # Shift the targets, not the logits: logits[:, t] predicts labels[:, t + 1], and the last position
    # predicts nothing. Slicing the logits instead would copy all of them.
    targets = labels.new_full(labels.shape, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    if ignored_targets is not None:
        targets[:, :-1].masked_fill_(ignored_targets[:, 1:], IGNORE_INDEX)
    return cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)
