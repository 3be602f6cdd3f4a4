"""Building the module that replaces a window of layers, before training.

- ``layer``: a deep copy of decoder layer ``s``, the first layer of the window
  (LLM-Streamline, arXiv 2403.19135, §3.2: "initialised with the parameters of
  the first pruned layer").
- ``ffn``: the same copy with its attention silenced, so that the layer computes
  only its feed-forward branch *with* the residual, e.g. for Llama-family
  ``x ↦ x + MLP(RMSNorm(x))``. Why not the paper's (v1) residual-free
  ``x ↦ FFN(x)``: a standard decoder layer always adds its input back
  (``out = x + attn + mlp``), and cancelling ``x`` would need attention to
  output ``−x`` exactly, which softmax attention over a normalised input cannot
  do. A residual-free FFN therefore needs custom modelling code, which the
  pruned model must not require. Silencing is exact: every parameter of the
  attention module is zero (so its output projection outputs 0) and frozen
  during training; the dead weights stay in the checkpoint, which keeps the
  standard architecture and loads with plain ``from_pretrained`` (they cost
  the attention's compute but add nothing to the output).

Copies share the model's config object, so later config edits (layer count,
attention implementation) reach the new layer as they reach the others.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from replaceme.adapters import ModelAdapter
from replaceme.errors import ReplacemeError

#: how each replacement is written into the saved model (recorded in pruning.json).
SAVED_AS = {
    "layer": "a standard decoder layer (trained copy of the window's first layer)",
    "ffn": (
        "a standard decoder layer whose attention weights are all zero (attention adds nothing), "
        "computing x + MLP(norm(x)) with the trained MLP and norms; the residual is kept "
        "(a residual-free FFN as in arXiv 2403.19135 v1 cannot be expressed by a standard layer)"
    ),
}


def copy_layer(model: Any, adapter: ModelAdapter, index: int) -> nn.Module:
    """A deep copy of decoder layer ``index`` sharing ``model.config`` (never a copy of it)."""
    layer = adapter.layers(model)[index]
    return copy.deepcopy(layer, memo={id(model.config): model.config})


@torch.no_grad()
def silence_attention(layer: nn.Module, adapter: ModelAdapter) -> nn.Module:
    """Zero and freeze every parameter of ``layer``'s attention (in place): its output
    projection then outputs exactly 0, so the layer is ``x ↦ x + MLP(norm(x))``."""
    try:
        attention = adapter.attention(layer)
    except AttributeError:
        raise ReplacemeError(
            f"replacement=ffn: no attention module at '{adapter.attention_path}' in {type(layer).__name__}; "
            "use replacement=layer"
        ) from None
    for param in attention.parameters():
        param.zero_()
        param.requires_grad_(False)
    return layer


def build_replacement(model: Any, adapter: ModelAdapter, start: int, kind: str) -> nn.Module:
    """The untrained replacement for a window starting at layer ``start``.

    Args:
        kind: ``"layer"`` or ``"ffn"`` (see the module docstring).
    """
    layer = copy_layer(model, adapter, start)
    for param in layer.parameters():
        param.requires_grad_(True)
    if kind == "ffn":
        silence_attention(layer, adapter)
    elif kind != "layer":
        raise ReplacemeError(f"unknown replacement {kind!r}; expected layer or ffn")
    return layer
