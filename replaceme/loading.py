"""Loading models and tokenizers from a local directory or the Hugging Face hub."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from replaceme.errors import ReplacemeError, first_line, shorten

log = logging.getLogger(__name__)
DTYPES = ("auto", "float32", "bfloat16", "float16")


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Turn off transformers' and the hub's per-file progress bars while loading (ours
    cover the long steps), and turn them back on afterwards where they were on: a
    program that loads a model through replaceme keeps its own settings."""
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    bars_on, hub_bars_on = hf_logging.is_progress_bar_enabled(), not hub_utils.are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars_on:
            hf_logging.enable_progress_bar()  # turns the hub's on too: set it back below
        if hub_bars_on:
            hub_utils.enable_progress_bars()
        else:
            hub_utils.disable_progress_bars()


#: device names replaceme accepts (checked before torch is imported)
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d{1,4})?)$")
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def check_device_name(device: Any, option: str = "--device") -> str:
    """Refuse a device string torch would not understand (no torch import); ``option``
    names the flag it came from in the error."""
    if not isinstance(device, str) or not DEVICE_PATTERN.match(device.strip()):
        raise ReplacemeError(f"invalid {option} '{shorten(device, 100)}'; choose from: {', '.join(DEVICE_CHOICES)}")
    return device.strip()


def resolve_device(device: str = "auto", option: str = "--device") -> str:
    """The device name to use (the one resolver of replaceme: ``torch.device(...)`` of it
    where a device object is needed): ``auto`` means CUDA when available, else CPU; an
    unknown or absent device is a one-line error naming ``option``."""
    import torch

    device = check_device_name(device, option)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ReplacemeError(f"{option} {device} was asked for, but no CUDA device is available")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ReplacemeError(f"{option} {device}: there are only {torch.cuda.device_count()} CUDA device(s)")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ReplacemeError(f"{option} mps was asked for, but MPS is not available")
    return device


def use_device(device: str) -> None:
    """Make ``cuda:N`` the current CUDA device, so that code using the current device
    (peak-memory meters, training, NCCL) measures and runs on the GPU the user chose."""
    import torch

    parsed = torch.device(device)
    if parsed.type == "cuda" and parsed.index is not None:
        torch.cuda.set_device(parsed)


def resolve_dtype(dtype: str, device: str, stored: str | None = None) -> Any:
    """The torch dtype to compute in. ``auto``: the checkpoint's ``stored`` dtype when
    known (see :func:`stored_dtype`: a bfloat16 checkpoint stays bfloat16, half the
    memory of a float32 copy), else bfloat16 on CUDA and float32 on CPU."""
    import torch

    if dtype not in DTYPES:
        raise ReplacemeError(f"unknown dtype '{dtype}'; choose from {', '.join(DTYPES)}")
    if dtype == "auto":
        if stored is not None:
            return getattr(torch, stored)
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


#: safetensors / config names of the floating dtypes a checkpoint may be stored in
_STORED_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32",
                 "bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


def stored_dtype(name_or_path: str | Path) -> str | None:
    """The floating dtype a local checkpoint is stored in (``bfloat16``, ``float16`` or
    ``float32``), or None when unknown (a hub id, another dtype).

    Read from the safetensors headers (the dtype holding the most floating-point
    elements: a bfloat16 model with a few float32 buffers is bfloat16), else from
    ``config.json``'s ``dtype`` / ``torch_dtype``. Reads headers only, never weights.
    """
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        return None
    from replaceme.model_files import checkpoint_layout

    try:
        layout = checkpoint_layout(path) or {}  # the one header reader; a broken checkpoint is refused elsewhere
    except (ReplacemeError, OSError):
        layout = {}
    counts: dict[str, int] = {}
    for entry in layout.values():
        if entry.dtype in _STORED_NAMES:
            elements = 1
            for size in entry.shape:
                elements *= size
            dtype = _STORED_NAMES[entry.dtype]
            counts[dtype] = counts.get(dtype, 0) + elements
    if counts:
        return max(counts, key=counts.get)
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    named = (config.get("dtype") or config.get("torch_dtype")) if isinstance(config, dict) else None
    return _STORED_NAMES.get(named) if isinstance(named, str) else None


def model_dtype(name_or_path: str, dtype: str, device: str) -> Any:
    """:func:`resolve_dtype` for the model at ``name_or_path`` (its stored dtype under
    ``auto``), logged, so a user sees what the model is loaded in and how to change it."""
    stored = stored_dtype(local_model_dir(name_or_path) or name_or_path) if dtype == "auto" else None
    chosen = resolve_dtype(dtype, device, stored)
    how = "its stored dtype" if stored else ("as asked" if dtype != "auto" else "the default for " + device)
    # said aloud only where the stored dtype is not what --dtype auto meant before (float32 on CPU, bf16 on CUDA)
    level = logging.INFO if stored and chosen != resolve_dtype("auto", device) else logging.DEBUG
    log.log(level, "loading the model in %s (%s; --dtype changes it)", str(chosen).removeprefix("torch."), how)
    return chosen


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists() or name.count("/") > 1




def _describe(exc: Exception) -> str:
    """A short reason for a loader failure (known library messages made plain)."""
    from replaceme.errors import explain

    text = str(exc)
    if "instantiate the backend tokenizer" in text:
        return "no usable tokenizer there (tokenizer.json, or tokenizer.model with sentencepiece installed)"
    if "size mismatch" in text:
        return "weights of a different shape than the config says (" + first_line(exc)[:200] + ")"
    message, code = explain(exc)
    return message if code == 2 else first_line(exc)


def resolve_model_path(name_or_path: str) -> str:
    """Map a registered model name (:mod:`replaceme.model_sources`: the demo, ...) to its
    directory; check a local path (and expand its ``~``: the loaders would take ``~/m``
    for a hub id)."""
    from replaceme.model_sources import registered_name, source_dir

    name = registered_name(name_or_path)
    if name is not None:
        return str(source_dir(name))
    check_model_source(name_or_path)
    local = Path(name_or_path).expanduser()
    return str(local) if local.exists() else name_or_path


def local_model_dir(name_or_path: str | Path) -> Path | None:
    """The local directory of a model (a registered source's, e.g. the demo's), or None for a hub id."""
    from replaceme.model_sources import registered_name, source_dir

    name = registered_name(name_or_path)
    if name is not None:
        return source_dir(name)
    path = Path(name_or_path).expanduser()
    return path if path.is_dir() else None


#: files that make a directory a tokenizer (any one of them)
TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "vocab.txt",
                     "spiece.model", "tokenizer.tiktoken")


def check_model_source(name_or_path: str) -> None:
    """Cheap checks of a model before loading it: a local path exists, is a model
    directory (a readable ``config.json`` mapping with ``model_type``) holding no FIFO,
    device or socket, has a tokenizer, and its checkpoint's headers (and index) are
    sound and agree with the config (:mod:`replaceme.model_files`). Hub ids pass (the
    hub answers when loading)."""
    from replaceme.model_files import check_config_fits, check_folder_entries, check_regular, checkpoint_layout

    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ReplacemeError("no model given")
    path = Path(name_or_path).expanduser()
    if not path.exists():
        if _looks_local(name_or_path):
            raise ReplacemeError(f"model path not found: {shorten(name_or_path)}")
        return
    if not path.is_dir():
        raise ReplacemeError(f"{shorten(name_or_path)} is a file; give the model's directory")
    check_folder_entries(path)
    config = path / "config.json"
    if not config.is_file():
        raise ReplacemeError(f"{shorten(name_or_path)} is not a model directory (no config.json)")
    check_regular(config)
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ReplacemeError(f"{config}: not valid JSON ({shorten(first_line(exc))})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise ReplacemeError(f"{config}: not a model config (no 'model_type')")
    if not any((path / name).is_file() for name in TOKENIZER_MARKERS):
        raise ReplacemeError(f"{shorten(name_or_path)} has no tokenizer files ({', '.join(TOKENIZER_MARKERS[:3])}, ...)")
    layout = checkpoint_layout(path)
    if layout is not None:
        check_config_fits(data, layout, f"cannot load model '{shorten(name_or_path)}'")


def config_layer_count(name_or_path: str) -> int | None:
    """The layer count a local model's ``config.json`` states (None for a hub id, or none stated)."""
    from replaceme.model_files import check_regular, config_layers

    config = Path(name_or_path).expanduser() / "config.json"
    if not config.is_file():
        return None
    check_regular(config)
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None  # check_model_source names the problem
    return config_layers(data) if isinstance(data, dict) else None


@contextlib.contextmanager
def _quiet_load_report() -> Iterator[None]:
    """Silence transformers' multi-line load report while loading (we check the same facts)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def check_loading_info(name: str, info: dict[str, Any]) -> None:
    """Refuse a checkpoint that does not match its config: weights that are missing
    (transformers would initialise them at random), unexpected, or of another shape."""
    for key, what in (("missing_keys", "missing from the checkpoint (would be random)"),
                      ("unexpected_keys", "in the checkpoint but not in the model"),
                      ("mismatched_keys", "of a different shape than the config says")):
        names = sorted(str(k if isinstance(k, str) else k[0]) for k in (info.get(key) or []))
        if names:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise ReplacemeError(f"cannot load model '{shorten(name)}': weights {what}: {shown}")
    errors = list(info.get("error_msgs") or []) + [f"{k}: {v}" for k, v in (info.get("conversion_errors") or {}).items()]
    if errors:
        raise ReplacemeError(f"cannot load model '{shorten(name)}': {first_line(Exception(errors[0]))}")


def load_config(path: str, name: str, trust_remote_code: bool = False) -> Any:
    """The model's config, read first, so that a bad value in ``config.json`` is blamed on
    that file (and its key), not on whatever reads it next (the tokenizer)."""
    from transformers import AutoConfig

    try:
        with quiet_transformers():
            return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - a bad value, an unknown architecture, an unreachable hub
        reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
        if isinstance(exc, ZeroDivisionError):
            reason = f"a value is zero where it divides another ({reason})"
        raise ReplacemeError(f"cannot load model '{shorten(name)}': config.json: {shorten(reason, 300)}") from exc


def load_tokenizer(path: str, name: str, config: Any, trust_remote_code: bool = False) -> Any:
    """The model's tokenizer (given the already-read ``config``); a failure names the tokenizer."""
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            return AutoTokenizer.from_pretrained(path, config=config, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - every loader failure is about the user's files
        raise ReplacemeError(f"cannot load model '{shorten(name)}': tokenizer: {_describe(exc)}") from exc


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
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    device = resolve_device(device)
    use_device(device)
    torch_dtype = model_dtype(path, dtype, device)
    config = load_config(path, name_or_path, trust_remote_code)
    tokenizer = load_tokenizer(path, name_or_path, config, trust_remote_code)
    try:
        with quiet_transformers(), _quiet_load_report():  # its findings are checked below and reported in one line
            model, info = AutoModelForCausalLM.from_pretrained(
                path, config=config, dtype=torch_dtype, trust_remote_code=trust_remote_code, output_loading_info=True,
                ignore_mismatched_sizes=True)  # mismatches are reported (and refused) by check_loading_info
    except ReplacemeError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ReplacemeError(f"cannot load model '{shorten(name_or_path)}': {_describe(exc)}") from exc
    check_loading_info(name_or_path, info)
    model.to(device)
    model.eval()
    from replaceme.resources import hold_large_allocations

    # While the model lives, freed activations, fit and evaluation buffers go back to the
    # system instead of staying resident as heap fragments (0.2B compare: -170 MB peak).
    hold_large_allocations(model)
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
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    check_4bit(device)
    path = resolve_model_path(name_or_path)
    device = resolve_device(device)
    use_device(device)
    compute = resolve_dtype(dtype, device)
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute)
    config = load_config(path, name_or_path, trust_remote_code)
    tokenizer = load_tokenizer(path, name_or_path, config, trust_remote_code)
    try:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(path, config=config, quantization_config=quantization,
                                                         dtype=compute, device_map={"": device},
                                                         trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, ImportError) as exc:
        raise ReplacemeError(f"cannot load model '{shorten(name_or_path)}' in 4 bits: {first_line(exc)}") from exc
    model.eval()
    return model, tokenizer
