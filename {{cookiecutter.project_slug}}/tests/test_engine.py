"""Device choice, seeding, and one real training step, validation and checkpoint on small volumes."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch
from conftest import compose_conf
from hydra.utils import instantiate
from omegaconf import OmegaConf

PATCH = [16, 16, 16]


@pytest.fixture
def engine(package_module):
    return package_module("training.engine")


@pytest.fixture
def restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_cpu_accelerator_gives_cpu(engine) -> None:
    assert engine.select_device(compose_conf(["trainer=cpu"]).trainer) == torch.device("cpu")


def test_auto_accelerator_follows_cuda_availability(engine) -> None:
    device = engine.select_device(compose_conf(["trainer=auto"]).trainer)
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible")
def test_cuda_accelerator_without_gpu_is_a_user_error(engine, user_error) -> None:
    with pytest.raises(user_error, match="no CUDA GPU"):
        engine.select_device(compose_conf(["trainer=gpu"]).trainer)


def test_configure_runtime_pins_threads_and_seeds(engine, restore_torch_threads) -> None:
    trainer = OmegaConf.merge(compose_conf(["trainer=cpu"]).trainer, {"num_threads": 1})
    engine.configure_runtime(trainer, seed=7)
    assert torch.get_num_threads() == 1
    first = torch.rand(4)
    engine.configure_runtime(trainer, seed=7)
    assert torch.equal(torch.rand(4), first)
    engine.configure_runtime(trainer, seed=8)
    assert not torch.equal(torch.rand(4), first)


def small_setup(package_module, device: torch.device):
    """A 2-class UNet, loss and optimizer from conf/, and one batch of cubes on ``device``."""
    cfg = compose_conf(["model=unet", "trainer=cpu"])
    torch.manual_seed(0)
    model = package_module("model.networks").build_model(cfg.model, 1, 2).to(device)
    optimizer = instantiate(cfg.optimizer)(model.parameters(), lr=cfg.lr)
    loss_fn = instantiate(cfg.loss)
    labels = torch.zeros(2, 1, *PATCH, dtype=torch.long)
    labels[:, :, 4:12, 4:12, 4:12] = 1
    images = labels.float() + 0.1 * torch.randn(labels.shape)
    batch = {"image": images, "label": labels}
    return model, optimizer, loss_fn, batch


def acceleration(package_module, device: torch.device, *overrides: str):
    trainer = compose_conf(["trainer=auto", *overrides]).trainer
    return package_module("training.acceleration").Acceleration.resolve(trainer, device)


def test_train_one_epoch_updates_the_model_on_cpu(engine, package_module) -> None:
    device = torch.device("cpu")
    model, optimizer, loss_fn, batch = small_setup(package_module, device)
    before = [parameter.detach().clone() for parameter in model.parameters()]
    fast = acceleration(package_module, device, "trainer.channels_last=true")
    loss = engine.train_one_epoch(model, [batch, batch], loss_fn, optimizer, fast.grad_scaler(), fast)
    assert isinstance(loss, float) and loss > 0
    assert any(not torch.equal(old, new) for old, new in zip(before, model.parameters(), strict=True))


def test_predict_and_validate_whole_volumes(engine, package_module) -> None:
    device = torch.device("cpu")
    model, _, _, batch = small_setup(package_module, device)
    volume = {"image": batch["image"][:1, :, :, :, :12], "label": batch["label"][:1, :, :, :, :12]}
    plain = acceleration(package_module, device)
    logits = engine.sliding_window_logits(model.eval(), volume["image"], PATCH, 0.25, plain)
    assert logits.shape == (1, 2, 16, 16, 12)
    assert logits.dtype == torch.float32
    dice, per_class = engine.validate(model, [volume], num_classes=2, patch_size=PATCH, acceleration=plain)
    assert 0.0 <= dice <= 1.0
    assert per_class == [pytest.approx(dice)]  # one foreground class: its Dice is the mean


def test_save_checkpoint_replaces_the_file_whole(engine, tmp_path: Path) -> None:
    path = tmp_path / "models" / "best.pt"
    engine.save_checkpoint(path, model={"w": torch.ones(2)}, epoch=1)
    engine.save_checkpoint(path, model={"w": torch.zeros(2)}, epoch=2)
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 2 and torch.equal(state["model"]["w"], torch.zeros(2))
    assert [entry.name for entry in path.parent.iterdir()] == ["best.pt"]


def test_a_full_disk_keeps_the_previous_checkpoint(engine, user_error, tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "models" / "best.pt"
    engine.save_checkpoint(path, model={"w": torch.ones(2)}, epoch=1)

    def disk_full(state: dict, file: Path) -> None:
        Path(file).write_bytes(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(user_error, match=r"No space left on the device writing .*best.pt; the previous"):
        engine.save_checkpoint(path, model={"w": torch.zeros(2)}, epoch=2)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["model"]["w"], torch.ones(2))
    assert [entry.name for entry in path.parent.iterdir()] == ["best.pt"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(
    "overrides, dtype",
    [
        (["trainer.amp_dtype=float16"], torch.float16),
        (["trainer.amp_dtype=bfloat16", "trainer.channels_last=true"], torch.bfloat16),
        (["trainer.amp_dtype=float16", "trainer.compile=true"], torch.float16),
    ],
)
def test_fast_path_training_steps_on_cuda(engine, package_module, overrides, dtype) -> None:
    device = torch.device("cuda")
    net, optimizer, loss_fn, batch = small_setup(package_module, device)
    fast = acceleration(package_module, device, *overrides)
    model = fast.prepare(net)
    with fast.autocast():
        assert model(fast.inputs(batch["image"])).dtype == dtype
    before = [parameter.detach().clone() for parameter in net.parameters()]
    scaler = fast.grad_scaler()
    assert scaler.is_enabled() == (dtype == torch.float16)
    loss = engine.train_one_epoch(model, [batch], loss_fn, optimizer, scaler, fast)
    assert torch.isfinite(torch.tensor(loss))
    logits = engine.sliding_window_logits(
        net.eval(), fast.inputs(batch["image"][:1]), PATCH, overlap=0.25, acceleration=fast
    )
    assert logits.dtype == torch.float32 and logits.device.type == "cuda"
    # The first step may be skipped if the initial loss scale overflows; two steps must move weights.
    engine.train_one_epoch(model, [batch], loss_fn, optimizer, scaler, fast)
    assert any(not torch.equal(old, new) for old, new in zip(before, net.parameters(), strict=True))


def test_overlays_pick_the_worst_median_and_best_cases(package_module) -> None:
    ranked_picks = package_module("evaluation.overlays").ranked_picks
    scores = {"a": 0.9, "b": 0.1, "c": 0.5, "d": float("nan"), "e": 0.7, "f": 0.3}
    assert ranked_picks(scores, 3) == {"b": "worst", "c": "median", "a": "best"}
    assert ranked_picks({"a": 0.4}, 3) == {"a": "only"}
    assert ranked_picks(scores, 0) == {}
