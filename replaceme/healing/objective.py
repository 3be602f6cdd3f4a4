"""The healing losses, as sums over next-token positions (tensors in, tensors out).

Notation: ``B`` sequences of ``T`` tokens, vocabulary ``V``. Position ``t`` predicts
token ``t + 1``; it counts when both tokens are real (``mask[:, t] & mask[:, t+1]``),
so pads never enter a loss. Every function returns the **sum** over counted
positions; the caller divides by the token count of the whole (global) batch, so
that gradient accumulation and data parallelism give the mean over that batch
whatever its split.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def positions(mask: torch.Tensor) -> torch.Tensor:
    """``[B, T-1]`` bool: the next-token positions that count (both tokens real)."""
    mask = mask.bool()
    return mask[:, :-1] & mask[:, 1:]


def ce_sum(student_logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy. ``student_logits [B, T, V]``, ``input_ids``/``mask [B, T]``."""
    keep = positions(mask)
    logits = student_logits[:, :-1][keep].float()  # [N, V]
    return F.cross_entropy(logits, input_ids[:, 1:][keep], reduction="sum")


def kd_sum(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
           temperature: float = 1.0) -> torch.Tensor:
    """Summed ``tau² · KL(p_teacher ‖ p_student)`` of the next-token distributions,
    both logits divided by ``tau`` (Hinton et al., 2015). Zero when the logits are equal."""
    keep = positions(mask)
    s = F.log_softmax(student_logits[:, :-1][keep].float() / temperature, dim=-1)  # [N, V]
    t = F.log_softmax(teacher_logits[:, :-1][keep].float() / temperature, dim=-1)
    return (t.exp() * (t - s)).sum() * temperature**2


def loss_sum(objective: str, student_logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor,
             teacher_logits: torch.Tensor | None = None, temperature: float = 1.0,
             ce_weight: float = 0.0) -> torch.Tensor:
    """The healing objective summed over positions: ``ce``, or ``kd`` mixed as
    ``(1 - ce_weight) · KD + ce_weight · CE``."""
    if objective == "ce":
        return ce_sum(student_logits, input_ids, mask)
    if teacher_logits is None:
        raise ValueError("the kd objective needs teacher logits")
    loss = kd_sum(student_logits, teacher_logits, mask, temperature)
    if ce_weight > 0:
        loss = (1 - ce_weight) * loss + ce_weight * ce_sum(student_logits, input_ids, mask)
    return loss


def count(mask: torch.Tensor) -> int:
    """Number of positions that count in ``mask``."""
    return int(positions(mask).sum())
