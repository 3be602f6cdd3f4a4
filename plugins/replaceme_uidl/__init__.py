"""Built-in plugin: UIDL (Gromov et al., "The Unreasonable Ineffectiveness of the
Deeper Layers", arXiv 2403.17887).

Select the block whose input and output are closest in angular distance on the
last token, and remove it. The paper's optional QLoRA "healing" is a separate,
later stage and is not part of this method.
"""

from __future__ import annotations

from replaceme.components import Method
from replaceme.hookspecs import hookimpl


@hookimpl
def register_methods(register):
    register(
        Method(
            name="uidl",
            selector="angular-distance",
            compensator="none",
            merger="remove",
            description="Remove the block with the smallest angular distance (no healing).",
            reference="Gromov et al. 2024, arXiv 2403.17887",
        )
    )
