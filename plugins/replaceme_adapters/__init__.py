"""Built-in plugin: the model adapters of the architectures replaceme supports.

Answers the ``model_adapter`` hook (last, so a third-party adapter for the same
architecture wins) from a table keyed by ``config.model_type``. A model whose
type is not in the table but whose layers look like Llama's (``model.layers``,
``mlp.down_proj``, exactly the pre-norms ``input_layernorm`` and
``post_attention_layernorm``) gets a ``llama-like`` adapter; a model with that
layout but other norms (a post-norm, say) is refused rather than guessed,
because where its MLP writes into the residual stream decides what can be folded.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from replaceme.adapters import ModelAdapter, ResidualWrite, refuse_unknown_norms
from replaceme.hookspecs import hookimpl

_PRE_NORMS = frozenset({"input_layernorm", "post_attention_layernorm"})
_GEMMA_POST = dict(
    norms=frozenset({"input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"}),
    mlp_write=ResidualWrite("post_feedforward_layernorm", "1+w"),
    attention_write=ResidualWrite("post_attention_layernorm", "1+w"),
)

#: model_type -> adapter, for the architectures we test.
ADAPTERS: dict[str, ModelAdapter] = {
    **{t: ModelAdapter(t, "model.layers", "mlp.down_proj", norms=_PRE_NORMS)
       for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "phi3")},
    "gemma2": ModelAdapter("gemma2", "model.layers", "mlp.down_proj", **_GEMMA_POST),
    "gemma3_text": ModelAdapter("gemma3_text", "model.layers", "mlp.down_proj", **_GEMMA_POST),
    "olmo2": ModelAdapter(
        "olmo2", "model.layers", "mlp.down_proj",
        norms=frozenset({"post_attention_layernorm", "post_feedforward_layernorm"}),
        mlp_write=ResidualWrite("post_feedforward_layernorm", "w"),
        attention_write=ResidualWrite("post_attention_layernorm", "w"),
    ),
    "gpt2": ModelAdapter("gpt2", "transformer.h", "mlp.c_proj", "conv1d", "attn", norms=frozenset({"ln_1", "ln_2"})),
    "opt": ModelAdapter("opt", "model.decoder.layers", "fc2", norms=frozenset({"self_attn_layer_norm", "final_layer_norm"})),
    "gpt_neox": ModelAdapter("gpt_neox", "gpt_neox.layers", "mlp.dense_4h_to_h", attention_path="attention", norms=_PRE_NORMS),
    "falcon": ModelAdapter("falcon", "transformer.h", "mlp.dense_4h_to_h", attention_path="self_attention",
                           norms=_PRE_NORMS | {"ln_attn", "ln_mlp"}),
}
LLAMA_LIKE = ModelAdapter("llama-like", "model.layers", "mlp.down_proj", norms=_PRE_NORMS)


def _resolves(adapter: ModelAdapter, model: Any) -> bool:
    try:
        _ = adapter.mlp_out(model, 0)
    except (AttributeError, IndexError, TypeError):
        return False
    return True


@hookimpl(trylast=True)
def model_adapter(model: Any) -> ModelAdapter | None:
    """Built-in answer: the table row for ``model_type``, else a Llama-like layout
    with Llama's norms; a known layout with unknown norms is refused in one line."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    adapter = ADAPTERS.get(model_type) or replace(LLAMA_LIKE, name=f"llama-like:{model_type}")
    if not _resolves(adapter, model):
        return None
    if not adapter.matches(model):
        refuse_unknown_norms(model, adapter)
    return adapter
