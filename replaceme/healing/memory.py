"""Memory needed to heal, estimated before training, and the refusal when it cannot fit.

The estimate (bytes) is

- the trainable parameters that need their own copy (those shared with the teacher:
  the student must not write into the unpruned weights),
- their gradients (same dtype as the parameters),
- AdamW's two moments (same dtype),
- activations of one micro-batch: the student's and the teacher's logits with their
  float32 log-softmax (``4 · m · T · V · 4`` bytes) plus, per decoder layer, about
  ``16 · m · T · h`` values kept for the backward pass (one per layer with gradient
  checkpointing, plus one layer's worth recomputed).

The model weights themselves are already in memory. It is compared with the free
memory of the device (CUDA: ``mem_get_info``; CPU: available RAM); healing that needs
more is refused before the first step, in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from replaceme.errors import ReplacemeError
from replaceme.healer import HealOptions


@dataclass
class MemoryEstimate:
    """Bytes by part; ``total`` is what training adds to what is already loaded."""

    trainable_params: int
    private_copies: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.private_copies + self.gradients + self.optimizer + self.activations

    def to_dict(self) -> dict[str, Any]:
        return {"trainable_params": self.trainable_params, "estimate_mb": round(self.total / 2**20, 1),
                "gradients_mb": round(self.gradients / 2**20, 1), "optimizer_mb": round(self.optimizer / 2**20, 1),
                "activations_mb": round(self.activations / 2**20, 1),
                "private_copies_mb": round(self.private_copies / 2**20, 1)}


def estimate(module: Any, config: Any, num_layers: int, opts: HealOptions, *, shared_bytes: int,
             checkpointing: bool, processes: int = 1) -> MemoryEstimate:
    """Estimate the memory healing ``module`` adds (see the module docstring).

    Args:
        shared_bytes: bytes of trainable parameters that share storage with the teacher.
        processes: processes of a ``torchrun`` job (each holds ``batch_size / processes``).
    """
    trainable = [p for p in module.parameters() if p.requires_grad]
    count = sum(p.numel() for p in trainable)
    param_bytes = sum(p.numel() * p.element_size() for p in trainable)
    micro = opts.micro_batch or max(1, opts.batch_size // processes)
    tokens = micro * opts.seq_len
    vocab, hidden = int(config.vocab_size), int(config.hidden_size)
    logits = 4 * tokens * vocab * 4
    per_layer = 16 * tokens * hidden * 4
    layers = per_layer * (1 + num_layers / 16 if checkpointing else num_layers)
    return MemoryEstimate(count, shared_bytes, param_bytes, 2 * param_bytes, int(logits + layers))


def available(device: Any) -> int:
    """Free bytes on ``device`` (CUDA free memory, else available RAM)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def check_fits(est: MemoryEstimate, device: Any, healer: str) -> None:
    """Refuse (one line) when the estimate exceeds the free memory of ``device``."""
    free = available(device)
    if est.total > free:
        raise ReplacemeError(
            f"healer '{healer}' needs about {est.total / 2**30:.1f} GiB more on {device} (parameters to copy, "
            f"gradients and AdamW state of {est.trainable_params:,} trained parameters, and one micro-batch) but "
            f"{free / 2**30:.1f} GiB are free: use --heal lora, a smaller -o heal.micro_batch, or more GPUs (torchrun)")
