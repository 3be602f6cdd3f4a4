"""LoRA healing (Hu et al., arXiv 2106.09685) through ``peft``, merged back into the weights.

Adapters ``W + (alpha / rank) · B A`` are added to the decoder's linear layers
(those named by ``target_modules``; embeddings and the LM head are left alone), only
``A`` and ``B`` train, and ``merge_and_unload(safe_merge=True)`` writes ``W + ΔW``
into a *new* tensor per layer (never in place, so weights shared with the unpruned
model stay untouched) and removes the adapter modules: the output is a standard
model with exactly the parameters of the training-free one.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from replaceme.errors import ReplacemeError
from replaceme.healer import HealContext, Healer, HealOptions
from replaceme.options import option


@dataclass
class LoraOptions(HealOptions):
    lr: float = option(5e-3, "peak learning rate (AdamW); 7B-class models: 1e-4 to 2e-4", minimum=0.0, maximum=10.0)
    rank: int = option(8, "rank r of each adapter (7B-class: 16-64)", minimum=1, maximum=65536)
    alpha: float = option(16.0, "scaling numerator: the update is (alpha / rank) * B A", minimum=0.0)
    dropout: float = option(0.0, "dropout on the adapters' input", minimum=0.0, maximum=0.99)
    target_modules: str = option("all", "comma-separated names (last part, e.g. q_proj,v_proj) of the decoder's "
                                        "linear layers to adapt, or 'all'")


def decoder_linears(model: Any, adapter: Any, targets: str) -> list[str]:
    """Full dotted names (from ``model``) of the linear layers inside its decoder layers
    (``adapter.layers_path``) whose last name part is in ``targets`` (``all``: every one)."""
    from torch import nn

    wanted = None if targets.strip() == "all" else {t.strip() for t in targets.split(",") if t.strip()}
    prefix = adapter.layers_path
    names = []
    for name, module in model.named_modules():
        if not name.startswith(prefix + "."):
            continue
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            if wanted is None or name.rsplit(".", 1)[-1] in wanted:
                names.append(name)
    if not names:
        raise ReplacemeError(f"healer 'lora': no linear layer of the decoder matches target_modules '{targets}'")
    return names


class LoraHealer(Healer):
    """Low-rank adapters on the decoder's linear layers, merged back after training."""

    name = "lora"
    description = "LoRA adapters (peft) on the decoder's linear layers, merged back (standard model out)."
    trains = "LoRA adapters"
    Options = LoraOptions

    def check_modules(self, model: Any, adapter: Any) -> None:
        decoder_linears(model, adapter, self.options.target_modules)  # a name that matches nothing: refused

    def prepare(self, student: Any, ctx: HealContext) -> Any:
        from peft import LoraConfig, get_peft_model

        o = self.options
        config = LoraConfig(r=o.rank, lora_alpha=o.alpha, lora_dropout=o.dropout, bias="none",
                            target_modules=decoder_linears(student, ctx.adapter, o.target_modules))
        with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing for the user
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return get_peft_model(student, config)

    def finish(self, trained: Any, ctx: HealContext) -> Any:
        return trained.merge_and_unload(safe_merge=True)
