"""Several models, one mask: the mean of their softmax outputs, optionally over mirrored passes.

As nnU-Net ensembles its folds: every member segments the same prepared input with its own
patch size, and ``--tta flip`` adds the input mirrored along every combination of the three
spatial axes (8 passes per member), each output mirrored back before it is averaged.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from ..errors import UserError
from ..training import engine
from ..training.acceleration import Acceleration

TTA_CHOICES = ("none", "flip")
SPATIAL_AXES = (2, 3, 4)  # of a (batch, channel, x, y, z) tensor
# What the members' cards must share: they must read the same input and name the same classes.
SHARED_CARD_KEYS = ("channels", "labels", "preprocessing")


@dataclass
class Ensemble:
    members: list[torch.nn.Module]
    patch_sizes: list[list[int]]  # each member's own
    flips: list[tuple[int, ...]]  # the spatial axes each pass mirrors; () is the plain pass

    @property
    def passes(self) -> int:
        return len(self.members) * len(self.flips)

    def describe(self) -> str:
        flips = "" if len(self.flips) == 1 else f" x {len(self.flips)} mirrorings"
        return f"mean softmax of {len(self.members)} model(s){flips}"

    def logits_or_probabilities(
        self, images: torch.Tensor, overlap: float, acceleration: Acceleration
    ) -> torch.Tensor:
        """Per class, for ``images`` (batch, channels, *spatial); argmax over dim 1 gives labels.

        A single pass returns its logits as they are, so that one model's masks are exactly
        those evaluate scored; several passes return the mean of their softmax outputs.
        """
        if self.passes == 1:
            return engine.sliding_window_logits(
                self.members[0], images, self.patch_sizes[0], overlap, acceleration
            )
        total = torch.zeros(())
        for model, patch in zip(self.members, self.patch_sizes, strict=True):
            for axes in self.flips:
                mirrored = images.flip(axes) if axes else images
                logits = engine.sliding_window_logits(model, mirrored, patch, overlap, acceleration)
                probabilities = torch.softmax(logits, dim=1)
                total = total + (probabilities.flip(axes) if axes else probabilities)
        return total / self.passes


def mirrorings(tta: str) -> list[tuple[int, ...]]:
    """The passes ``--tta`` asks for: the plain one, or all 8 combinations of mirrored axes."""
    if tta not in TTA_CHOICES:
        raise UserError(f"--tta {tta}: choose one of {', '.join(TTA_CHOICES)}.")
    if tta == "none":
        return [()]
    return [axes for count in range(4) for axes in itertools.combinations(SPATIAL_AXES, count)]


def check_members(cards: list[dict], names: list[str]) -> None:
    """Refuse members that read their inputs differently or segment different classes."""
    for card, name in zip(cards[1:], names[1:], strict=True):
        for key in SHARED_CARD_KEYS:
            if card[key] != cards[0][key]:
                raise UserError(
                    f"Model {name} differs from {names[0]} in its card's `{key}` ({card[key]} != "
                    f"{cards[0][key]}); ensemble members must be trained on the same data, prepared "
                    "the same way (e.g. the folds of one `cv`)."
                )
