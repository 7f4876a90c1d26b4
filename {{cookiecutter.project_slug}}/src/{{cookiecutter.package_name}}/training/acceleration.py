"""The GPU fast path: mixed precision, memory layout and compilation, as ``trainer.*`` asks.

Every option is resolved once for the device in use (on the CPU each one is off, so CPU runs
stay bitwise repeatable) and logged to MLflow as ``resolved.*``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from omegaconf import DictConfig


@dataclass(frozen=True)
class Acceleration:
    device: torch.device
    amp_dtype: torch.dtype | None  # None: full precision
    channels_last: bool
    compile: bool

    @classmethod
    def resolve(cls, trainer: DictConfig, device: torch.device) -> Acceleration:
        cuda = device.type == "cuda"
        return cls(
            device=device,
            amp_dtype=_amp_dtype(trainer.amp_dtype) if cuda and trainer.amp else None,
            channels_last=cuda and trainer.channels_last,
            compile=trainer.compile,
        )

    @classmethod
    def for_inference(cls, device: torch.device) -> Acceleration:
        """Outside a pipeline (``predict``): mixed precision on a GPU, nothing else."""
        amp_dtype = _amp_dtype("auto") if device.type == "cuda" else None
        return cls(device=device, amp_dtype=amp_dtype, channels_last=False, compile=False)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling, which float16 needs against underflowing gradients and bfloat16 does not."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def inputs(self, tensor: torch.Tensor) -> torch.Tensor:
        """A batch moved to the device, asynchronously from pinned memory, in the model's layout.

        It reaches the network as a plain tensor: the network needs none of MONAI's metadata,
        and ``torch.compile`` cannot trace a MetaTensor (it fails in the convolution).
        """
        tensor = tensor.to(self.device, non_blocking=True).as_subclass(torch.Tensor)
        return tensor.to(memory_format=torch.channels_last_3d) if self.channels_last else tensor

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model to train: in the chosen layout, and compiled when asked.

        The compiled wrapper is for training steps only; checkpoints and validation use the
        network itself, whose parameters the wrapper shares.
        """
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last_3d)
        return torch.compile(model) if self.compile else model

    def resolved(self) -> dict[str, str]:
        precision = "float32" if self.amp_dtype is None else str(self.amp_dtype).removeprefix("torch.")
        return {
            "resolved.precision": precision,
            "resolved.channels_last": str(self.channels_last).lower(),
            "resolved.compile": str(self.compile).lower(),
            "resolved.cudnn_benchmark": str(torch.backends.cudnn.benchmark).lower(),
        }


def _amp_dtype(choice: str) -> torch.dtype:
    """``trainer.amp_dtype``: auto takes bfloat16 where the GPU computes it natively (Ampere
    and newer), because it needs no loss scaling; float16 otherwise."""
    if choice == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return getattr(torch, choice)
