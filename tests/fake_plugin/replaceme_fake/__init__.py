"""A minimal third-party method: remove the first eligible block (layers 1..n).

It shows the whole contract a plugin package needs: a selector class with typed
options, a method recipe reusing built-in stages, and the entry point in
pyproject.toml. The test suite installs it and expects ``fake-first`` to show up
in ``replaceme methods``.
"""

from dataclasses import dataclass

from replaceme.plugin import Block, Method, Plan, Selector, hookimpl, option


@dataclass
class FirstOptions:
    offset: int = option(1, "first layer of the block (layer 0 is the embedding side)")


class FirstBlockSelector(Selector):
    name = "fake-first-block"
    description = "The block starting at `offset`."
    Options = FirstOptions

    def candidates(self, ctx):
        size = ctx.layers + ctx.layers_added_per_block   # --layers is always net removal
        return [Block(self.options.offset, self.options.offset + size)]

    def select(self, stats, ctx):
        return Plan(self.candidates(ctx))


@hookimpl
def register_selectors(register):
    register(FirstBlockSelector)


@hookimpl
def register_methods(register):
    register(Method("fake-first", selector="fake-first-block", compensator="none",
                    merger="remove", description="Remove the first block after layer 0."))
