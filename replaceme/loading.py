"""Loading models and tokenizers from a local directory or the Hugging Face hub."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from replaceme.errors import ReplacemeError

log = logging.getLogger(__name__)
DTYPES = ("auto", "float32", "bfloat16", "float16")


def quiet_transformers() -> None:
    """Turn off transformers' per-file progress bars (ours cover the long steps)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def resolve_device(device: str = "auto") -> str:
    """``auto`` means CUDA when available, else CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ReplacemeError("--device cuda was asked for, but no CUDA device is available")
    return device


def resolve_dtype(dtype: str, device: str) -> Any:
    """``auto``: bfloat16 on CUDA, float32 on CPU."""
    import torch

    if dtype not in DTYPES:
        raise ReplacemeError(f"unknown dtype '{dtype}'; choose from {', '.join(DTYPES)}")
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists() or name.count("/") > 1


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def resolve_model_path(name_or_path: str) -> str:
    """Map the demo name to its (built and cached) directory; check local paths exist."""
    from replaceme.demo import demo_model_dir, is_demo

    if is_demo(name_or_path):
        return str(demo_model_dir())
    if _looks_local(name_or_path) and not Path(name_or_path).expanduser().exists():
        raise ReplacemeError(f"model path not found: {name_or_path}")
    return name_or_path


def load_model(
    name_or_path: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer, in eval mode on ``device``.

    ``trust_remote_code`` is off unless the user asks. Any failure (missing path,
    unreachable hub, not a causal LM) becomes a one-line :class:`ReplacemeError`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    path = resolve_model_path(name_or_path)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, ImportError) as exc:
        raise ReplacemeError(f"cannot load model '{name_or_path}': {_first_line(exc)}") from exc
    model.to(device)
    model.eval()
    return model, tokenizer
