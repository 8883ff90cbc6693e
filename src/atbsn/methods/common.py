"""What several methods share and none owns: the laptop budget of every "cpu" preset, and the rivals trained on a
plain UNet (student C's network). Registers nothing."""

from __future__ import annotations

from ..config import RunConfig
from ..students import Student
from . import Method, parameters, start

# A laptop budget every method shares (its "cpu" preset), so that they compare on one budget.
CPU_BUDGET = {"steps": 2_000, "batch": 8, "crop": 64, "width": 24, "lr": 3e-4, "val_every": 250, "save_every": 250}


def unet_method(config: RunConfig, init, loss, title: str) -> Method:
    """A rival trained on a plain UNet (student C's network) that sees 0..1 values, as its authors' does."""
    model = Student("C", width=config.width)
    model.config.value_range = 1.0
    how = start(model, init)
    return Method(model, loss, f"training {title} (UNet width {config.width}, {parameters(model)} parameters, "
                               f"{how}); a non-blind network at inference")


# A laptop budget every method shares (its "cpu" preset), so that they compare on one budget.
