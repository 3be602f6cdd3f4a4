"""Train the demo model: a small ``LlamaForCausalLM`` on the synthetic language.

Everything here is deterministic for a given :class:`Recipe`: the corpus comes
from seeded ``random.Random`` generators, the weights from ``torch.manual_seed``
and the batch order from a seeded ``torch.Generator``, and training runs on a
fixed number of CPU threads (one by default: thread count changes the rounding,
and on shared cores one thread is also the fastest). Two exceptions: other CPUs
or library versions may round differently, and a machine too slow to finish the
recipe's steps within ``time_budget_s`` trains fewer steps (logged, and recorded
in the returned summary as ``steps`` < ``planned_steps``).

Measured on a shared 2-core machine (torch 2.13 CPU): about 0.23-0.37 s per
step, so the 360 default steps take 85-130 s and the whole first build
(corpus, training, evaluation, saving) 95-135 s.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the demo model (part of its cache key).

    The defaults are *the* demo model; tests build tiny variants by overriding
    fields (``Recipe(steps=3, layers=2, hidden=32, ...)``).
    """

    # architecture (Llama)
    layers: int = 8
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 256
    seq_len: int = 256
    tie_embeddings: bool = False
    # corpus
    train_docs: int = 8000
    calibration_docs: int = 256
    validation_docs: int = 256
    # optimisation
    steps: int = 360
    batch_size: int = 8
    lr: float = 1e-2
    min_lr_ratio: float = 0.1
    warmup_steps: int = 40
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    #: CPU threads for training. One thread keeps the weights identical on any
    #: machine size and is fastest when the cores are shared with other work
    #: (several threads then wait on each other); 0 means all usable cores (max 8).
    threads: int = 1
    #: Seconds of training the steps should fit in. On a machine too slow for
    #: that, fewer steps are done (with a warning, and then the weights depend
    #: on the machine's speed). 0 (the default): no limit, every step is done;
    #: the default recipe's weights ship with the package, so nobody waits.
    time_budget_s: float = 0.0

    def replace(self, **changes: Any) -> Recipe:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def model_config(recipe: Recipe, tokenizer: PreTrainedTokenizerBase) -> Any:
    """The ``LlamaConfig`` of the demo model."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden,
        intermediate_size=recipe.intermediate,
        num_hidden_layers=recipe.layers,
        num_attention_heads=recipe.heads,
        num_key_value_heads=recipe.kv_heads,
        max_position_embeddings=recipe.seq_len,
        tie_word_embeddings=recipe.tie_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.02,
        rms_norm_eps=1e-6,
    )


def threads(requested: int = 0) -> int:
    """How many CPU threads to train with: ``requested``, or the usable cores (at most 8)."""
    if requested > 0:
        return requested
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def pack(tokenizer: PreTrainedTokenizerBase, docs: Sequence[str], seq_len: int) -> torch.Tensor:
    """Concatenate ``<bos> doc <eos>`` for all docs and cut into rows of ``seq_len``."""
    import torch

    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for row in tokenizer(list(docs), add_special_tokens=True)["input_ids"]:
        ids.extend(row)
        ids.append(eos)
    n = len(ids) // seq_len
    if n == 0:
        raise ValueError(f"corpus too small: {len(ids)} tokens < seq_len {seq_len}")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def lr_factor(step: int, recipe: Recipe, total_steps: int | None = None) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` at ``total_steps``."""
    total = total_steps or recipe.steps
    warmup = min(recipe.warmup_steps, max(1, total // 4))
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


#: Steps after which the pace is checked against the time budget (the first
#: few steps are slower and left out of the pace).
_PACE_CHECKS = (30, 60, 100, 150, 200, 250, 300, 400, 500, 600, 800)
_PACE_FROM = 5


def perplexity(
    model: Any, tokenizer: PreTrainedTokenizerBase, docs: Sequence[str], batch_size: int = 32
) -> float:
    """Token-level perplexity of ``model`` on ``docs``, one padded sequence per document.

    Each document is tokenized as the tokenizer does by default (``<bos>`` +
    words); every token after ``<bos>`` is predicted.
    """
    import torch

    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(docs), batch_size):
            enc = tokenizer(list(docs[start : start + batch_size]), return_tensors="pt", padding=True)
            logits = model(**enc, use_cache=False).logits[:, :-1].float()
            targets = enc["input_ids"][:, 1:]
            mask = enc["attention_mask"][:, 1:].bool()
            nll = torch.nn.functional.cross_entropy(logits[mask], targets[mask], reduction="sum")
            total_nll += nll.item()
            total_tokens += int(mask.sum())
    model.train(was_training)
    return math.exp(total_nll / max(1, total_tokens))


def train(
    recipe: Recipe,
    tokenizer: PreTrainedTokenizerBase,
    train_docs: Sequence[str],
    validation_docs: Sequence[str] = (),
) -> tuple[LlamaForCausalLM, dict[str, Any]]:
    """Train a fresh model; return it (in eval mode) and a summary of the run."""
    import torch
    from transformers import LlamaForCausalLM

    from replaceme.console import LossBar

    started = time.monotonic()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads(recipe.threads))
    try:
        data = pack(tokenizer, train_docs, recipe.seq_len)
        torch.manual_seed(recipe.seed)
        model = LlamaForCausalLM(model_config(recipe, tokenizer))
        model.train()
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
        no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": recipe.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=recipe.lr,
            betas=(0.9, 0.98),
            eps=1e-8,
        )
        # The number of steps is fixed by the recipe; only when this machine is
        # too slow to do them within the time budget is it lowered (and the
        # cosine schedule compressed), which is logged and recorded.
        plan = {"steps": recipe.steps}
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, recipe, plan["steps"]))
        generator = torch.Generator().manual_seed(recipe.seed)
        order = torch.randperm(len(data), generator=generator)
        cursor = 0
        smoothed = None
        steps_done = 0
        log.info(
            "training the demo model: %d layers, hidden %d, %.2fM parameters, %d steps of %d x %d tokens, %d threads",
            recipe.layers,
            recipe.hidden,
            sum(p.numel() for p in model.parameters()) / 1e6,
            recipe.steps,
            recipe.batch_size,
            recipe.seq_len,
            torch.get_num_threads(),
        )
        train_started = time.monotonic()
        pace_started = 0.0
        with LossBar("training demo model", total=recipe.steps) as bar:
            for step in range(recipe.steps):
                if step >= plan["steps"]:
                    break
                if cursor + recipe.batch_size > len(order):
                    order = torch.randperm(len(data), generator=generator)
                    cursor = 0
                batch = data[order[cursor : cursor + recipe.batch_size]]
                cursor += recipe.batch_size
                loss = model(input_ids=batch, labels=batch, use_cache=False).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if recipe.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
                optimizer.step()
                scheduler.step()
                value = loss.item()
                smoothed = value if smoothed is None else 0.9 * smoothed + 0.1 * value
                steps_done = step + 1
                bar.update(loss=smoothed)
                elapsed = time.monotonic() - train_started
                if steps_done == _PACE_FROM:
                    pace_started = elapsed
                if steps_done % 50 == 0:
                    log.debug(
                        "step %d: loss %.3f, lr %.2e, %.2f s/step",
                        steps_done,
                        smoothed,
                        scheduler.get_last_lr()[0],
                        elapsed / steps_done,
                    )
                if recipe.time_budget_s and steps_done in _PACE_CHECKS and steps_done < plan["steps"]:
                    pace = (elapsed - pace_started) / (steps_done - _PACE_FROM)
                    affordable = max(steps_done + 1, int(steps_done + (recipe.time_budget_s - elapsed) / pace))
                    if affordable < plan["steps"]:
                        (log.debug if plan["steps"] < recipe.steps else log.warning)(
                            "this machine is slow (%.2f s per step): training the demo model for %d "
                            "instead of %d steps to stay within %.0f s; it will be weaker than usual",
                            pace,
                            affordable,
                            recipe.steps,
                            recipe.time_budget_s,
                        )
                        plan["steps"] = affordable
                if recipe.time_budget_s and elapsed > 1.15 * recipe.time_budget_s and steps_done < plan["steps"]:
                    log.warning("demo model training stopped after %d steps (time budget)", steps_done)
                    break
        if steps_done < recipe.steps:
            log.info("demo model trained for %d of %d steps", steps_done, recipe.steps)
        train_seconds = time.monotonic() - train_started
        model.eval()
        summary: dict[str, Any] = {
            "steps": steps_done,
            "planned_steps": recipe.steps,
            "train_loss": smoothed,
            "train_tokens": steps_done * recipe.batch_size * recipe.seq_len,
            "train_seconds": round(train_seconds, 1),
            "threads": torch.get_num_threads(),
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        if validation_docs:
            summary["validation_ppl"] = perplexity(model, tokenizer, validation_docs)
        summary["seconds"] = round(time.monotonic() - started, 1)
        log.info(
            "demo model trained in %.0f s: train loss %.3f, validation perplexity %s",
            summary["seconds"],
            smoothed if smoothed is not None else float("nan"),
            f"{summary['validation_ppl']:.3f}" if "validation_ppl" in summary else "n/a",
        )
        return model, summary
    finally:
        torch.set_num_threads(old_threads)
