"""Where evaluation runs: device and dtype choice, and moving a model there.

``auto`` means CUDA when available (in bfloat16, or float16 on GPUs without
bfloat16), else CPU in float32 (half precision on CPU is slow and inexact).
"""

from __future__ import annotations

import logging

import torch

from replaceme.errors import ReplacemeError, unknown

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ReplacemeError("--device cuda was asked for, but no CUDA device is available")
        return torch.device("cuda")
    raise unknown("device", name, ("auto", "cpu", "cuda"))


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bfloat16 (float16 where unsupported) on CUDA, float32 on CPU."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in _DTYPES:
        raise unknown("dtype", name, ("auto", *_DTYPES))
    return _DTYPES[name]


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without any)."""
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


def place_model(model: torch.nn.Module, device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """Move and cast ``model`` in place (``nn.Module.to``) and put it in eval mode.

    Casting is in place: a float32 model evaluated with ``dtype="bfloat16"``
    stays bfloat16 afterwards. Models spread over several devices
    (``hf_device_map``) are left where they are.

    Returns:
        The device (of the first parameter) and dtype the model now has.
    """
    target_device = resolve_device(device)
    target_dtype = resolve_dtype(dtype, target_device)
    if getattr(model, "hf_device_map", None) and len(set(model.hf_device_map.values())) > 1:
        log.info("model is dispatched over several devices; leaving it in place")
        model.eval()
        return model_device(model), next(model.parameters()).dtype
    model.to(device=target_device, dtype=target_dtype)
    model.eval()
    return model_device(model), target_dtype
