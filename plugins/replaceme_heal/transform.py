"""``transform`` healing: train only what the compensation wrote (the ReplaceMe paper's
"transform only" healing, arXiv 2505.02819, Table 15).

What the compensation wrote is found generically, with no per-method branch:

- a decoder layer the merger declares it writes in place (:meth:`Merger.modifies`)
  is compared tensor by tensor with the unpruned layer it came from, and the
  tensors that differ train: the output projection a linear map was folded into,
  the post-norm weight a diagonal map was folded into, the parameters a
  collapse rewrote;
- a layer the merger swapped in (a replacement layer: its tensors are not the
  teacher's and its index is not declared) trains whole;
- a block with no compensation (plain removal) wrote nothing; for it the MLP
  output projection of the layer before the block trains (the layer now feeding
  the block's successor; for a block starting at layer 0, the layer that took its
  place), where a linear map would have been folded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from replaceme.components import NoCompensation
from replaceme.errors import ReplacemeError
from replaceme.healer import HealContext, Healer

if TYPE_CHECKING:
    import torch


def written_parameters(student: Any, ctx: HealContext) -> dict[str, torch.nn.Parameter]:
    """The parameters of ``student`` that the compensation wrote (see the module docstring),
    by dotted name inside the decoder-layer list."""
    import torch

    adapter, origins = ctx.adapter, ctx.origins()
    declared = ctx.merger.modifies(ctx.plan, ctx.compensations)
    shared = {t.untyped_storage().data_ptr() for t in ctx.teacher.parameters()}
    t_layers, out = adapter.layers(ctx.teacher), {}
    for i, layer in enumerate(adapter.layers(student)):
        origin = origins[i]
        reference = dict(t_layers[origin].named_parameters())
        params = list(layer.named_parameters())
        swapped = declared is not None and origin not in declared and all(
            p.untyped_storage().data_ptr() not in shared for _, p in params)
        for name, p in params:
            if p.untyped_storage().data_ptr() in shared:
                continue
            t = reference.get(name)
            if swapped or t is None or t.shape != p.shape or not torch.equal(p.detach(), t.detach()):
                out[f"{i}.{name}"] = p
    for comp in ctx.compensations:
        if isinstance(comp, NoCompensation):
            start = comp.block.start
            index = origins.index(start - 1) if start >= 1 else origins.index(comp.block.end)
            for name, p in adapter.mlp_out(student, index).named_parameters():
                out[f"{index}.{adapter.mlp_out_path}.{name}"] = p
    return out


class TransformHealer(Healer):
    """Train exactly the tensors the compensation wrote."""

    name = "transform"
    description = "Train only what the compensation wrote (folded projection, post-norm weight, replacement layer)."
    trains = "the compensation's tensors"

    def prepare(self, student: Any, ctx: HealContext) -> Any:
        params = written_parameters(student, ctx)
        if not params:
            raise ReplacemeError("healer 'transform': the compensation wrote no tensor to train")
        for p in params.values():
            p.requires_grad_(True)
        return student
