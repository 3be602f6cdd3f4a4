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
    """``auto`` means CUDA when available, else CPU; ``cuda:N`` must name an existing GPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ReplacemeError(f"invalid --device '{device}'; use auto, cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ReplacemeError(f"--device {device} was asked for, but no CUDA device is available")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ReplacemeError(f"--device {device}: there are only {torch.cuda.device_count()} CUDA device(s)")
    return device


def use_device(device: str) -> None:
    """Make ``cuda:N`` the current CUDA device, so that code using the current device
    (peak-memory meters, training, NCCL) measures and runs on the GPU the user chose."""
    import torch

    parsed = torch.device(device)
    if parsed.type == "cuda" and parsed.index is not None:
        torch.cuda.set_device(parsed)


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
    use_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, ImportError) as exc:
        raise ReplacemeError(f"cannot load model '{name_or_path}': {_first_line(exc)}") from exc
    model.to(device)
    model.eval()
    return model, tokenizer


def check_4bit(device: str) -> None:
    """4-bit calibration needs bitsandbytes and a CUDA GPU: a one-line error otherwise."""
    import importlib.util

    import torch

    if importlib.util.find_spec("bitsandbytes") is None or not torch.cuda.is_available() or device == "cpu":
        raise ReplacemeError("--calib-4bit needs a CUDA GPU and the bitsandbytes package (pip install bitsandbytes)")


def load_model_4bit(name_or_path: str, *, device: str = "auto", dtype: str = "auto",
                    trust_remote_code: bool = False) -> tuple[Any, Any]:
    """Load a causal LM quantised to 4 bits (bitsandbytes NF4, compute in ``dtype``) on
    one GPU, for the calibration pass only (the ReplaceMe reference's ``use_4bit``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    quiet_transformers()
    check_4bit(device)
    path = resolve_model_path(name_or_path)
    device = resolve_device(device)
    use_device(device)
    compute = resolve_dtype(dtype, device)
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, quantization_config=config, dtype=compute,
                                                     device_map={"": device}, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, ImportError) as exc:
        raise ReplacemeError(f"cannot load model '{name_or_path}' in 4 bits: {_first_line(exc)}") from exc
    model.eval()
    return model, tokenizer
