"""Where the decoder blocks of each architecture live, and how each sublayer
writes into the residual stream.

A :class:`ModelAdapter` is a small declarative description: the path of the
``ModuleList`` of decoder layers, the path (inside a layer) of the MLP output
projection, that projection's weight layout, and for each sublayer (attention,
MLP) a :class:`ResidualWrite`: whether its output is added to the residual
stream directly (``x + m``, Llama, GPT-2, ...) or through a post-norm
(``x + norm(m)``, Gemma 2/3, OLMo 2), and that norm's formula.

This decides what can be folded: a linear map on what the MLP adds to the
stream folds into the output projection when the MLP writes directly; behind a
post-norm the norm would undo a map folded before it, so only a diagonal map
folds, into the norm's weight (``w·x̂``: ``w ← d·w``; Gemma's ``(1+w)·x̂``:
``w ← d·(1+w) − 1``), and a dense one cannot be expressed at all.

Everything else (surgery, hooks, folding) is generic code driven by these
facts. The built-in rows are answered by the built-in plugin
``replaceme_adapters`` through the ``model_adapter`` hook; this module knows
nothing of plugins or the registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from replaceme.errors import ReplacemeError

NormForm = Literal["w", "1+w"]


@dataclass(frozen=True)
class ResidualWrite:
    """How one sublayer's output reaches the residual stream.

    Attributes:
        post_norm: dotted path (inside a decoder layer) of the norm applied to
            the sublayer's output before the residual add; None = added directly.
        norm_form: that norm's output scaling: ``"w"`` (``w·x̂``, OLMo 2, Llama's
            RMSNorm) or ``"1+w"`` (``(1+w)·x̂``, Gemma's RMSNorm).
    """

    post_norm: str | None = None
    norm_form: NormForm = "w"

    @property
    def direct(self) -> bool:
        return self.post_norm is None

    def describe(self) -> str:
        return "directly" if self.direct else f"through the post-norm '{self.post_norm}' ({'w' if self.norm_form == 'w' else '(1+w)'}·x̂)"


DIRECT = ResidualWrite()


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
        mlp_write, attention_write: how the MLP and the attention write into the
            residual stream.
        norms: dotted paths (inside a decoder layer, outside the attention module)
            of every norm the layer is known to have; a model whose layers hold
            another norm does not match (its residual form would be a guess).
    """

    name: str
    layers_path: str
    mlp_out_path: str
    mlp_out_layout: Literal["linear", "conv1d"] = "linear"
    attention_path: str = "self_attn"
    mlp_write: ResidualWrite = DIRECT
    attention_write: ResidualWrite = DIRECT
    norms: frozenset[str] = field(default_factory=frozenset)

    def layers(self, model: Any) -> Any:
        """The ``ModuleList`` of decoder layers."""
        return _get(model, self.layers_path)

    def num_layers(self, model: Any) -> int:
        return len(self.layers(model))

    def mlp_out(self, model: Any, index: int) -> Any:
        """The MLP output projection of decoder layer ``index``."""
        return _get(self.layers(model)[index], self.mlp_out_path)

    def mlp_residual(self, model: Any, index: int) -> Any:
        """The module whose output layer ``index`` adds to the residual stream for its
        MLP: the post-norm when there is one, else the output projection. Its output
        is ``m_index`` in the statistics."""
        if self.mlp_write.direct:
            return self.mlp_out(model, index)
        return _get(self.layers(model)[index], self.mlp_write.post_norm)

    def attention(self, layer: Any) -> Any:
        """The self-attention module of a decoder layer."""
        return _get(layer, self.attention_path)

    def matches(self, model: Any) -> bool:
        """The paths resolve and the first layer holds exactly the known norms."""
        try:
            layer = self.layers(model)[0]
            _get(layer, self.mlp_out_path)
            for write in (self.mlp_write, self.attention_write):
                if not write.direct:
                    _get(layer, write.post_norm)
        except (AttributeError, IndexError, TypeError):
            return False
        return not self.unknown_norms(layer)

    def unknown_norms(self, layer: Any) -> list[str]:
        """Norm modules of ``layer`` this adapter does not describe (attention internals excepted)."""
        return [path for path in norm_paths(layer, self.attention_path) if path not in self.norms]

    def describe(self) -> dict[str, str]:
        return {"adapter": self.name, "mlp_writes": self.mlp_write.describe(),
                "attention_writes": self.attention_write.describe()}


def norm_paths(layer: Any, attention_path: str) -> list[str]:
    """Dotted paths of the norm modules inside ``layer`` (by class name), outside its attention."""
    out = []
    for path, module in layer.named_modules():
        if not path or path == attention_path or path.startswith(attention_path + "."):
            continue
        if "norm" in type(module).__name__.lower():
            out.append(path)
    return out


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def refuse_unknown_norms(model: Any, adapter: ModelAdapter) -> None:
    """One-line error for a model whose layers have the adapter's layout but norms it does not know."""
    layer = adapter.layers(model)[0]
    extra = adapter.unknown_norms(layer)
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    raise ReplacemeError(
        f"architecture '{model_type}': its decoder layers hold norm(s) the '{adapter.name}' adapter does not know "
        f"({', '.join(extra)}), so where each sublayer writes into the residual stream would be a guess; refused "
        "(a plugin can describe it through the model_adapter hook)"
    )


def __getattr__(name: str) -> Any:
    if name == "adapter_for":  # a clear message for code written before the move
        raise AttributeError(
            "replaceme.adapters.adapter_for moved to replaceme.registry.adapter_for (adapters know nothing of plugins)"
        )
    raise AttributeError(f"module 'replaceme.adapters' has no attribute {name!r}")
