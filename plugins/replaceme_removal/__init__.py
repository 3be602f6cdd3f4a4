"""Built-in plugin: plain block removal.

- selector ``range``: a given block (``start``), or the last layers before the final one;
- compensator ``none``: nothing replaces the block;
- merger ``remove``: delete the block's layers;
- method ``block-removal`` = range + none + remove.
"""

from __future__ import annotations

from dataclasses import dataclass

from replaceme.components import Compensator, Merger, Method, NoCompensation, SelectionContext, Selector
from replaceme.errors import ReplacemeError
from replaceme.hookspecs import hookimpl
from replaceme.options import option
from replaceme.plan import Block, Plan


@dataclass
class RangeOptions:
    start: int | None = option(
        None,
        "first layer of the block; unset = the last layers before the final one "
        "(the block then ends at layer L-1, which is kept)",
    )


class RangeSelector(Selector):
    """A fixed block: ``[start, start + n)``, or ``[L-1-n, L-1)`` when ``start`` is unset."""

    name = "range"
    description = "A fixed block of layers (--start), or the last ones before the final layer."
    Options = RangeOptions

    def _block(self, ctx: SelectionContext) -> Block:
        size = ctx.layers + ctx.layers_added_per_block
        start = self.options.start if self.options.start is not None else ctx.num_layers - 1 - size
        if start < 0 or start + size > ctx.num_layers:
            raise ReplacemeError(
                f"block [{start}, {start + size}) does not fit a model with {ctx.num_layers} layers"
            )
        return Block(start, start + size)

    def candidates(self, ctx: SelectionContext) -> list[Block]:
        return [self._block(ctx)]

    def select(self, stats, ctx: SelectionContext) -> Plan:
        block = self._block(ctx)
        return Plan([block], details={"rule": "fixed" if self.options.start is not None else "last-before-final"})


class NoneCompensator(Compensator):
    """Nothing replaces the removed block."""

    name = "none"
    description = "No compensation: the block is simply removed."
    produces = NoCompensation
    default_merger = "remove"


class RemoveMerger(Merger):
    """Delete every layer of every block."""

    name = "remove"
    description = "Delete the block's layers."
    accepts = (NoCompensation,)

    def merge(self, model, adapter, plan, compensations) -> None:
        from replaceme.surgery import remove_layers

        remove_layers(model, adapter, {i for b in plan.blocks for i in range(b.start, b.end)})

    def modifies(self, plan, compensations) -> set[int]:
        return set()  # layers are only deleted


@hookimpl
def register_selectors(register):
    register(RangeSelector)


@hookimpl
def register_compensators(register):
    register(NoneCompensator)


@hookimpl
def register_mergers(register):
    register(RemoveMerger)


@hookimpl
def register_methods(register):
    register(
        Method(
            name="block-removal",
            selector="range",
            compensator="none",
            merger="remove",
            description="Remove a given block (-o start S), or the last layers before the final one; no compensation.",
            reference="baseline",
        )
    )
