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

#: where the attention module and its output projection sit inside a decoder
#: layer, for the architectures we know (Llama-family, OPT, GPT-2, GPT-NeoX, Falcon).
ATTENTION_OUTPUTS = (
    ("self_attn", "o_proj"),
    ("self_attn", "out_proj"),
    ("attn", "c_proj"),
    ("attention", "dense"),
    ("self_attention", "dense"),
)

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


def attention_of(layer: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The attention module of ``layer`` and its output projection.

    Raises:
        ReplacemeError: for an architecture not in :data:`ATTENTION_OUTPUTS`.
    """
    for attn_name, proj_name in ATTENTION_OUTPUTS:
        attention = getattr(layer, attn_name, None)
        projection = getattr(attention, proj_name, None)
        if isinstance(projection, nn.Module):
            return attention, projection
    known = ", ".join(f"{a}.{p}" for a, p in ATTENTION_OUTPUTS)
    raise ReplacemeError(
        f"replacement=ffn: cannot find the attention output projection of {type(layer).__name__} "
        f"(known: {known}); use replacement=layer"
    )


@torch.no_grad()
def silence_attention(layer: nn.Module) -> nn.Module:
    """Zero and freeze every parameter of ``layer``'s attention (in place): its output
    projection then outputs exactly 0, so the layer is ``x ↦ x + MLP(norm(x))``."""
    attention, _ = attention_of(layer)
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
        silence_attention(layer)
    elif kind != "layer":
        raise ReplacemeError(f"unknown replacement {kind!r}; expected layer or ffn")
    return layer
