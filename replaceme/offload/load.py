"""Opening a model directory for ``--offload``: the skeleton and the tokenizer, no weights read."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from replaceme.adapters import ModelAdapter
from replaceme.checkpoint import Checkpoint
from replaceme.errors import ReplacemeError, first_line, shorten
from replaceme.offload.skeleton import OffloadedModel


def load_offloaded(path: str, *, device: str, dtype: str, trust_remote_code: bool,
                   adapter_for: Callable[[Any], ModelAdapter], disk_budget: int | None = None) -> tuple[OffloadedModel, Any]:
    """Build the skeleton of the model at ``path`` and its tokenizer (no weights read yet);
    ``adapter_for(model)`` finds its :class:`~replaceme.adapters.ModelAdapter` (the caller
    passes :func:`replaceme.registry.adapter_for`: plugins live above this layer).
    ``disk_budget``: bytes of activations the engine may keep on disk between layers
    (None: half the free space; see :mod:`replaceme.offload.budget`)."""
    from replaceme.loading import (
        load_config,
        load_tokenizer,
        model_dtype,
        resolve_device,
        resolve_model_path,
        use_device,
    )
    from replaceme.resources import hold_large_allocations

    local = Path(resolve_model_path(path)).expanduser()
    if not local.is_dir():
        raise ReplacemeError(f"--offload needs a local model directory (got '{shorten(path)}'); download it first")
    device = resolve_device(device)
    use_device(device)
    torch_dtype = model_dtype(str(local), dtype, device)
    checkpoint = Checkpoint(local)
    config = load_config(str(local), path, trust_remote_code)
    tokenizer = load_tokenizer(str(local), path, config, trust_remote_code)
    model = empty_model(config, path, torch_dtype, trust_remote_code)
    offloaded = OffloadedModel(model, adapter_for(model), checkpoint, torch_dtype, device)
    offloaded.disk_budget = disk_budget
    hold_large_allocations(offloaded)  # while it streams layers; undone when it is collected
    return offloaded, tokenizer


def empty_model(config: Any, name: str, dtype: Any = None, trust_remote_code: bool = False) -> Any:
    """The model ``config`` describes, in eval mode, every parameter on the ``meta`` device (no
    memory, no weights read): the module tree an adapter is found from, and the skeleton of
    ``--offload``. ``name`` is what an error calls the model."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    from replaceme.loading import quiet_transformers

    try:
        with quiet_transformers(), init_empty_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, ImportError) as exc:
        raise ReplacemeError(f"cannot load model '{shorten(name)}': {first_line(exc)}") from exc
    model.tie_weights()  # as from_pretrained does (from_config leaves tied weights apart on meta)
    model.eval()
    return model
