"""Where evaluation runs: device and dtype choice, and moving a model there.

``auto`` means CUDA when available, else CPU; a model is evaluated in the dtype
it was loaded in (its checkpoint's stored dtype unless ``--dtype`` said otherwise)
unless a dtype is named. The names are resolved by :mod:`replaceme.loading`, so
``evaluate`` and model loading agree.
"""

from __future__ import annotations

import logging

import torch

from replaceme import loading

log = logging.getLogger(__name__)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bfloat16 on CUDA, float32 elsewhere (used when the model's own dtype is unknown); else the named dtype."""
    return loading.resolve_dtype(name, str(device))


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without any)."""
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


def place_model(model: torch.nn.Module, device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """Move and cast ``model`` in place (``nn.Module.to``) and put it in eval mode.

    Casting is in place: a float32 model evaluated with ``dtype="bfloat16"``
    stays bfloat16 afterwards. A model dispatched over several devices
    (``hf_device_map``) is left where it is.

    Returns:
        The device (of the first parameter) and the dtype the model now has.
    """
    device_map = getattr(model, "hf_device_map", None) or {}
    if len(set(device_map.values())) > 1:
        log.info("the model is dispatched over several devices; leaving it in place")
        model.eval()
        return model_device(model), next(model.parameters()).dtype
    target = torch.device(loading.resolve_device(device))
    current = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    # auto keeps the dtype the model was loaded in (its checkpoint's, see loading.stored_dtype)
    target_dtype = current if dtype == "auto" and current is not None else resolve_dtype(dtype, target)
    model.to(device=target, dtype=target_dtype)
    model.eval()
    return model_device(model), target_dtype
