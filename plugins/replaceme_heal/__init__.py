"""Built-in plugin: the healers (the fourth stage, after the merge).

- ``lora``: low-rank adapters (peft) on the decoder's linear layers, merged back
  with ``merge_and_unload``: the output is a standard model with the parameter
  count of the training-free one (:mod:`replaceme_heal.lora`);
- ``transform``: only the tensors the compensation wrote, the ReplaceMe paper's
  "transform only" healing (:mod:`replaceme_heal.transform`);
- ``full``: every weight (parameters, gradients and AdamW state: about four times
  the model's memory on top of the teacher).

Each trains with the options of :class:`replaceme.healer.HealOptions` (objective,
steps, lr, batch size, ...); the loop is the framework's (:mod:`replaceme.healing`).
"""

from __future__ import annotations

from typing import Any

from replaceme.healer import HealContext, Healer, HealOptions
from replaceme.hookspecs import hookimpl
from replaceme_heal.lora import LoraHealer
from replaceme_heal.transform import TransformHealer


class FullHealer(Healer):
    """Train every weight of the pruned model."""

    name = "full"
    description = "Train all weights (memory: weights + gradients + AdamW state, refused when it cannot fit)."
    trains = "all weights"
    Options = HealOptions

    def prepare(self, student: Any, ctx: HealContext) -> Any:
        for p in student.parameters():
            p.requires_grad_(True)
        return student

    def warnings(self, ctx: HealContext) -> list[str]:
        params = sum(p.numel() for p in ctx.teacher.parameters())
        return [f"healer 'full' trains every weight: a private copy, gradients and two AdamW moments of up to "
                f"{params:,} parameters (about 4x the model's memory on top of the teacher); --heal lora needs far less"]


@hookimpl
def register_healers(register):
    register(LoraHealer)
    register(TransformHealer)
    register(FullHealer)
