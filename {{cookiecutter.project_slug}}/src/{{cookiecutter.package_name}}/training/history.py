"""What the finished epochs of a training run produced: losses, validation Dice, the best epoch.

A resume checkpoint holds it (resume.py) and a resumed run restores it; the train stage writes it
as the CSV curves that dvc.yaml plots.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


@dataclass
class History:
    epoch: int = 0  # the last finished epoch
    losses: list[dict] = field(default_factory=list)  # {"epoch", "train_loss"} per epoch
    # {"epoch", "val_dice", "val_dice_<class>"...} per validation
    dices: list[dict] = field(default_factory=list)
    best_dice: float = -1.0
    best_epoch: int = 0

    def add(self, epoch: int, loss: float, dice: dict[str, float] | None) -> bool:
        """Record one finished epoch; True when its validation Dice is the best yet.

        The first validation is always the best so far, so that a NaN Dice still leaves a model.
        """
        self.epoch = epoch
        self.losses.append({"epoch": epoch, "train_loss": loss})
        if dice is None:
            return False
        self.dices.append({"epoch": epoch, **dice})
        if self.best_epoch and not dice["val_dice"] > self.best_dice:
            return False
        self.best_dice, self.best_epoch = dice["val_dice"], epoch
        return True

    def epoch_metrics(self) -> dict[int, dict[str, float]]:
        """Per finished epoch, its metrics (train_loss, and val_dice where it validated)."""
        metrics = {row["epoch"]: {"train_loss": row["train_loss"]} for row in self.losses}
        for row in self.dices:
            metrics[row["epoch"]] |= {key: value for key, value in row.items() if key != "epoch"}
        return metrics

    def write_curves(self, folder: Path) -> None:
        """The CSV files dvc.yaml plots: loss, mean validation Dice, and one file per class."""
        folder.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(self.losses).to_csv(folder / "train_loss.csv", index=False)
        dices = pd.DataFrame(self.dices)
        dices[["epoch", "val_dice"]].to_csv(folder / "val_dice.csv", index=False)
        per_class = folder / "val_dice_per_class"
        shutil.rmtree(per_class, ignore_errors=True)  # no file left from another dataset's classes
        per_class.mkdir()
        for column in dices.columns.drop(["epoch", "val_dice"]):
            name = column.removeprefix("val_dice_")
            dices[["epoch", column]].rename(columns={column: "val_dice"}).to_csv(
                per_class / f"{name}.csv", index=False
            )
