"""Where the decoder blocks of each architecture live.

A :class:`ModelAdapter` is a small declarative description: the path of the
``ModuleList`` of decoder layers, the path (inside a layer) of the MLP output
projection whose output is ``m_i`` (the MLP output before the residual add),
and that projection's weight layout. Everything else (surgery, hooks, folding)
is generic code driven by these facts, so supporting a new architecture means
adding one row, or answering the ``model_adapter`` hook from a plugin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from replaceme.errors import ReplacemeError
from replaceme.hookspecs import hookimpl


@dataclass(frozen=True)
class ModelAdapter:
    """Architecture facts needed for depth pruning.

    Attributes:
        name: a label for listings and ``pruning.json``.
        layers_path: dotted path from the model to its ``ModuleList`` of decoder layers.
        mlp_out_path: dotted path from a decoder layer to its MLP output projection.
        mlp_out_layout: ``"linear"`` (``nn.Linear``, weight ``[out, in]``, ``y = x Wᵀ + b``)
            or ``"conv1d"`` (GPT-2's ``Conv1D``, weight ``[in, out]``, ``y = x W + b``).
        attention_path: dotted path from a decoder layer to its self-attention module.
    """

    name: str
    layers_path: str
    mlp_out_path: str
    mlp_out_layout: Literal["linear", "conv1d"] = "linear"
    attention_path: str = "self_attn"

    def layers(self, model: Any) -> Any:
        """The ``ModuleList`` of decoder layers."""
        return _get(model, self.layers_path)

    def num_layers(self, model: Any) -> int:
        return len(self.layers(model))

    def mlp_out(self, model: Any, index: int) -> Any:
        """The MLP output projection of decoder layer ``index``."""
        return _get(self.layers(model)[index], self.mlp_out_path)

    def attention(self, layer: Any) -> Any:
        """The self-attention module of a decoder layer."""
        return _get(layer, self.attention_path)

    def matches(self, model: Any) -> bool:
        try:
            layers = self.layers(model)
            _get(layers[0], self.mlp_out_path)
        except (AttributeError, IndexError, TypeError):
            return False
        return True


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


_LLAMA_LIKE = ModelAdapter("llama-like", "model.layers", "mlp.down_proj")

#: model_type -> adapter, for the architectures we test.
BUILTIN_ADAPTERS: dict[str, ModelAdapter] = {
    **{t: ModelAdapter(t, "model.layers", "mlp.down_proj") for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "phi3")},
    "gpt2": ModelAdapter("gpt2", "transformer.h", "mlp.c_proj", "conv1d", "attn"),
    "opt": ModelAdapter("opt", "model.decoder.layers", "fc2"),
    "gpt_neox": ModelAdapter("gpt_neox", "gpt_neox.layers", "mlp.dense_4h_to_h", attention_path="attention"),
    "falcon": ModelAdapter("falcon", "transformer.h", "mlp.dense_4h_to_h", attention_path="self_attention"),
}


@hookimpl(trylast=True)
def model_adapter(model: Any) -> ModelAdapter | None:
    """Built-in answer to the ``model_adapter`` hook."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    adapter = BUILTIN_ADAPTERS.get(model_type)
    if adapter is not None and adapter.matches(model):
        return adapter
    if _LLAMA_LIKE.matches(model):  # many newer decoders share Llama's layout
        return ModelAdapter(f"llama-like:{model_type}", _LLAMA_LIKE.layers_path, _LLAMA_LIKE.mlp_out_path)
    return None


def adapter_for(model: Any) -> ModelAdapter:
    """Ask the plugins for an adapter of ``model``; a one-line error when none knows it."""
    from replaceme.registry import plugin_manager

    adapter = plugin_manager().hook.model_adapter(model=model)
    if adapter is None:
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise ReplacemeError(
            f"unsupported architecture '{model_type}'; built-in: {', '.join(sorted(BUILTIN_ADAPTERS))} "
            "(a plugin can add one through the model_adapter hook)"
        )
    return adapter
