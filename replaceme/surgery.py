"""Model surgery: remove decoder layers, write replacement layers, fold linear maps.

After any change the model stays a standard Hugging Face model:
``config.num_hidden_layers`` is updated, every per-layer config list (such as
``layer_types``) is sliced, every attention ``layer_idx`` is renumbered (the KV
cache indexes layers by it), and tied embeddings stay tied (they are not touched).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from replaceme.adapters import ModelAdapter
from replaceme.errors import ReplacemeError

#: config keys that are lists but never per-layer.
_NOT_PER_LAYER = {"architectures", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens"}


def _set_layers(model: Any, adapter: ModelAdapter, layers: list[nn.Module]) -> None:
    parent_path, _, attr = adapter.layers_path.rpartition(".")
    parent = model
    for part in filter(None, parent_path.split(".")):
        parent = getattr(parent, part)
    setattr(parent, attr, nn.ModuleList(layers))


def per_layer_config_keys(config: Any, num_layers: int) -> list[str]:
    """Config attributes that hold one entry per decoder layer."""
    return [
        key
        for key, value in vars(config).items()
        if isinstance(value, (list, tuple)) and len(value) == num_layers and key not in _NOT_PER_LAYER
    ]


def renumber_layers(model: Any, adapter: ModelAdapter) -> None:
    """Set ``layer_idx`` of every submodule of decoder layer ``j`` to ``j``."""
    for j, layer in enumerate(adapter.layers(model)):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = j


def keep_layers(model: Any, adapter: ModelAdapter, keep: list[int], replacements: dict[int, nn.Module] | None = None) -> None:
    """Keep decoder layers ``keep`` (old indices, in order), optionally swapping some.

    Args:
        keep: old indices of the layers that stay, ascending.
        replacements: old index -> module to put in that slot instead.

    Updates the config (layer count and per-layer lists) and renumbers ``layer_idx``.
    """
    replacements = replacements or {}
    layers = adapter.layers(model)
    old_count = len(layers)
    config = model.config
    per_layer = per_layer_config_keys(config, old_count)
    _set_layers(model, adapter, [replacements.get(i, layers[i]) for i in keep])
    config.num_hidden_layers = len(keep)
    for key in per_layer:
        value = getattr(config, key)
        setattr(config, key, type(value)(value[i] for i in keep))
    renumber_layers(model, adapter)


def remove_layers(model: Any, adapter: ModelAdapter, remove: set[int] | list[int]) -> None:
    """Delete the decoder layers with (old) indices ``remove``."""
    remove = set(remove)
    count = adapter.num_layers(model)
    if remove and (min(remove) < 0 or max(remove) >= count):
        raise ValueError(f"layer indices {sorted(remove)} out of range for {count} layers")
    keep_layers(model, adapter, [i for i in range(count) if i not in remove])


@torch.no_grad()
def fold_linear_map(model: Any, adapter: ModelAdapter, layer_index: int, transform: torch.Tensor) -> None:
    """Fold ``r ↦ r T`` into what layer ``layer_index``'s MLP adds to the residual stream.

    When the MLP writes directly (``x + m``), ``m = h Wᵀ + b`` (``nn.Linear``,
    W: ``[hidden, inner]``) or ``m = h W + b`` (``Conv1D``, W: ``[inner, hidden]``)
    becomes ``m T`` (ReplaceMe, arXiv 2505.02819, eq. 6): ``W ← Tᵀ W`` and
    ``b ← Tᵀ b`` for Linear, ``W ← W T`` and ``b ← b T`` for Conv1D.

    Behind a post-norm (``x + norm(m)``, Gemma 2/3, OLMo 2) only a diagonal
    ``T = diag(d)`` can be folded: the norm's output ``g ⊙ m̂`` (``g = w`` or
    ``1 + w``) times ``d`` is ``(d ⊙ g) ⊙ m̂``, exact because the scaling comes
    after the normalisation; so ``w ← d ⊙ w`` (and ``b ← d ⊙ b``), or for
    Gemma's form ``w ← d ⊙ (1 + w) − 1``. A map folded *before* the norm would
    be undone by it, so a dense T is refused.

    Done in float64 and cast back to the parameter dtype; no parameter is added.

    Args:
        transform: T, ``[hidden, hidden]``.
    """
    write = adapter.mlp_write
    if write.direct:
        _fold_into_projection(adapter.mlp_out(model, layer_index), adapter.mlp_out_layout, transform)
        return
    t = transform.detach().to(torch.float64)
    d = torch.diagonal(t)
    if torch.count_nonzero(t - torch.diag(d)):
        raise ReplacemeError(
            f"cannot fold a dense linear map on '{adapter.name}': its MLP writes {write.describe()}; "
            "only a diagonal map (-o diag true) can be folded there"
        )
    norm = adapter.mlp_residual(model, layer_index)
    weight = norm.weight
    d = d.to(weight.device)
    w = weight.detach().to(torch.float64)
    new_w = d * (1.0 + w) - 1.0 if write.norm_form == "1+w" else d * w
    weight.copy_(new_w.to(weight.dtype))
    bias = getattr(norm, "bias", None)
    if bias is not None:
        bias.copy_((d * bias.detach().to(torch.float64)).to(bias.dtype))


def _fold_into_projection(proj: nn.Module, layout: str, transform: torch.Tensor) -> None:
    weight = proj.weight
    t = transform.to(device=weight.device, dtype=torch.float64)
    w = weight.detach().to(torch.float64)
    new_w = t.T @ w if layout == "linear" else w @ t
    weight.copy_(new_w.to(weight.dtype))
    bias = getattr(proj, "bias", None)
    if bias is not None:
        bias.copy_((bias.detach().to(torch.float64) @ t).to(bias.dtype))
