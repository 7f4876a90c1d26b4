"""The floor for the train stage: a hand-written MONAI loop doing the same work, and nothing else.

Same preprocessed data, network, loss, optimizer, crops, batch, epochs, validation cadence and
device as the baked project's train stage, read from its params.yaml and data/processed. No
tracking, no DVC, no checkpoints. Prints the loop's seconds and its best validation Dice as JSON.

    python bench/bare_loop.py PROJECT
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import yaml
from monai.data import CacheDataset, ThreadDataLoader, decollate_batch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.networks.nets import UNet
from monai.transforms import (
    AsDiscrete,
    CastToTyped,
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    RandCropByPosNegLabeld,
    RandFlipd,
    SpatialPadd,
)
from monai.utils import set_determinism

KEYS = ("image", "label")


def cases(processed: Path, split: str) -> list[dict[str, str]]:
    # Fold 0, as the default experiment: its val fold, and the other folds for training.
    folds = json.loads((processed / "splits.json").read_text())["folds"]
    names = folds[0] if split == "val" else sorted(name for fold in folds[1:] for name in fold)
    return [
        {
            "image": str(processed / "imagesTr" / f"{n}.nii.gz"),
            "label": str(processed / "labelsTr" / f"{n}.nii.gz"),
        }
        for n in names
    ]


def main(project: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    patch = [
        int(edge)
        for edge in json.loads((project / "metrics" / "train.json").read_text())[
            "patch_size"
        ].split("x")
    ]
    dataset = json.loads((project / "data" / "processed" / "dataset.json").read_text())
    in_channels, num_classes = len(dataset["modality"]), len(dataset["labels"])
    trainer = params["trainer"]
    torch.set_num_threads(trainer["num_threads"])
    set_determinism(seed=params["seed"])
    device = torch.device(
        "cuda"
        if torch.cuda.is_available() and trainer["accelerator"] != "cpu"
        else "cpu"
    )
    amp = trainer["amp"] and device.type == "cuda"
    if not trainer["deterministic"]:
        torch.backends.cudnn.benchmark = True

    load = [
        LoadImaged(keys=KEYS),
        EnsureChannelFirstd(keys=KEYS),
        CastToTyped(keys="label", dtype=torch.long),
    ]
    ratio = params["train"]["foreground_ratio"]
    augment = [
        SpatialPadd(keys=KEYS, spatial_size=patch),
        RandCropByPosNegLabeld(
            keys=KEYS,
            label_key="label",
            spatial_size=patch,
            pos=ratio,
            neg=1 - ratio,
            num_samples=params["train"]["samples_per_volume"],
        ),
        RandFlipd(keys=KEYS, prob=0.5, spatial_axis=0),
    ]
    processed = project / "data" / "processed"
    train = CacheDataset(
        cases(processed, "train"), Compose(load + augment), progress=False
    )
    val = CacheDataset(cases(processed, "val"), Compose(load), progress=False)
    workers = trainer["num_workers"]
    train_loader = ThreadDataLoader(
        train, batch_size=params["batch_size"], shuffle=True, num_workers=workers
    )
    val_loader = ThreadDataLoader(val, batch_size=1, num_workers=workers)

    net = {
        key: value for key, value in params["model"]["net"].items() if key != "_target_"
    }
    model = UNet(in_channels=in_channels, out_channels=num_classes, **net).to(device)
    loss_fn = DiceCELoss(
        **{key: value for key, value in params["loss"].items() if key != "_target_"}
    )
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=params["lr"],
        weight_decay=params["optimizer"]["weight_decay"],
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    to_pred, to_label = (
        AsDiscrete(argmax=True, to_onehot=num_classes),
        AsDiscrete(to_onehot=num_classes),
    )

    best = -1.0
    started = time.perf_counter()
    for epoch in range(1, params["epochs"] + 1):
        model.train()
        for batch in train_loader:
            images, labels = batch["image"].to(device), batch["label"].to(device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, enabled=amp):
                loss = loss_fn(model(images), labels)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        if epoch % params["train"]["val_every"] == 0 or epoch == params["epochs"]:
            model.eval()
            metric = DiceMetric(include_background=False, reduction="mean")
            with torch.no_grad(), torch.autocast(device.type, enabled=amp):
                for batch in val_loader:
                    logits = sliding_window_inference(
                        batch["image"].to(device), patch, 1, model, overlap=0.25
                    )
                    metric(
                        [to_pred(item) for item in decollate_batch(logits.float())],
                        [
                            to_label(item)
                            for item in decollate_batch(batch["label"].to(device))
                        ],
                    )
            best = max(best, float(metric.aggregate().item()))
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {"loop_seconds": seconds, "best_val_dice": best, "device": str(device)}
        )
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
