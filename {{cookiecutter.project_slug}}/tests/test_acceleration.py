"""What the trainer's fast-path options become on each device, and the GPU cache."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_conf


def resolve(package_module, device: torch.device, *overrides: str):
    trainer = compose_conf(["trainer=auto", *overrides]).trainer
    return package_module("training.acceleration").Acceleration.resolve(trainer, device)


def test_on_the_cpu_every_gpu_option_is_off(package_module) -> None:
    asked = ["trainer.amp=true", "trainer.amp_dtype=float16", "trainer.channels_last=true"]
    fast = resolve(package_module, torch.device("cpu"), *asked)
    assert fast.resolved() == {
        "resolved.precision": "float32",
        "resolved.channels_last": "false",
        "resolved.compile": "false",
        "resolved.cudnn_benchmark": "false",
    }
    assert not fast.grad_scaler().is_enabled()
    image = torch.ones(1, 1, 4, 4, 4)
    with fast.autocast():
        assert (image @ image).dtype == torch.float32
    assert fast.inputs(image).is_contiguous()


def test_a_compiled_network_trains_on_a_loaded_batch(package_module) -> None:
    """Loaders give MetaTensors, which torch.compile cannot trace: `inputs` hands over plain ones.

    The eager backend runs the same tracing as the GPU's compiler, in seconds on a CPU.
    """
    from monai.data import MetaTensor
    from monai.networks.nets import UNet

    fast = resolve(package_module, torch.device("cpu"))
    batch = fast.inputs(MetaTensor(torch.randn(1, 1, 16, 16, 16)))
    assert type(batch) is torch.Tensor
    network = torch.compile(UNet(3, 1, 2, (4, 8), (2,), num_res_units=0), backend="aot_eager")
    network(batch).sum().backward()


@pytest.mark.parametrize(
    "cache, size_mb, expected",
    [("auto", 10, "memory"), ("auto", 10_000, "disk"), ("disk", 10, "disk"), ("memory", 10_000, "memory")],
)
def test_cache_choice_on_the_cpu(package_module, cache, size_mb, expected) -> None:
    loaders = package_module("data.loaders")
    caching = loaders.Caching.of(compose_conf([f"data.cache={cache}"]))
    assert loaders.cache_choice(caching, size_mb, torch.device("cpu")) == expected


def test_a_gpu_cache_without_a_gpu_is_refused(package_module, user_error) -> None:
    loaders = package_module("data.loaders")
    caching = loaders.Caching.of(compose_conf(["data.cache=gpu"]))
    with pytest.raises(user_error, match="data.cache=gpu but training runs on cpu"):
        loaders.cache_choice(caching, 10, torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_on_a_gpu_takes_bfloat16_where_supported(package_module) -> None:
    fast = resolve(package_module, torch.device("cuda"))
    expected = "bfloat16" if torch.cuda.is_bf16_supported(including_emulation=False) else "float16"
    assert fast.resolved()["resolved.precision"] == expected
    assert fast.grad_scaler().is_enabled() == (expected == "float16")
