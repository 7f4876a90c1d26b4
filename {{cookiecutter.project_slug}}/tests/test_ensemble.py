"""Ensembles in `predict`: the mean of the members' softmax outputs, over mirrored passes with
``--tta flip`` (test_cv.py runs `predict --model cv:<group> --tta flip` on real fold models)."""

from __future__ import annotations

import pytest
import torch

SHAPE = (1, 1, 8, 8, 8)  # one volume the size of the patch: one sliding window, the model's output


@pytest.fixture
def ensemble(package_module):
    return package_module("inference.ensemble")


def members(count: int) -> list[torch.nn.Module]:
    """Convolutions with random, lopsided kernels: mirroring the input changes their output."""
    torch.manual_seed(0)
    return [torch.nn.Conv3d(1, 3, kernel_size=3, padding=1).eval() for _ in range(count)]


def plain(package_module):
    return package_module("training.acceleration").Acceleration.for_inference(torch.device("cpu"))


def test_flip_adds_all_eight_mirrorings(ensemble) -> None:
    flips = ensemble.mirrorings("flip")
    assert len(flips) == len(set(flips)) == 8 and () in flips and (2, 3, 4) in flips
    assert ensemble.mirrorings("none") == [()]


def test_members_are_averaged_as_softmax_over_mirrored_passes(ensemble, package_module) -> None:
    models, image = members(2), torch.rand(SHAPE)
    combined = ensemble.Ensemble(models, [[8, 8, 8]] * 2, ensemble.mirrorings("flip"))
    scores = combined.logits_or_probabilities(image, 0.25, plain(package_module))
    with torch.no_grad():
        expected = torch.stack(
            [
                torch.softmax(model(image.flip(axes)), dim=1).flip(axes)
                if axes
                else torch.softmax(model(image), 1)
                for model in models
                for axes in ensemble.mirrorings("flip")
            ]
        ).mean(0)
    assert torch.allclose(scores, expected, atol=1e-6)
    assert torch.allclose(scores.sum(dim=1), torch.ones(1, 8, 8, 8), atol=1e-5)  # probabilities
    assert combined.describe() == "mean softmax of 2 model(s) x 8 mirrorings"


def test_one_model_without_tta_keeps_its_logits(ensemble, package_module) -> None:
    """So that `predict` with one model gives exactly the masks evaluate scored."""
    model, image = members(1)[0], torch.rand(SHAPE)
    single = ensemble.Ensemble([model], [[8, 8, 8]], [()])
    with torch.no_grad():
        assert torch.equal(single.logits_or_probabilities(image, 0.25, plain(package_module)), model(image))


def test_members_prepared_differently_are_refused(ensemble, user_error) -> None:
    card = {
        "channels": ["MRI"],
        "labels": {"0": "background", "1": "tumour"},
        "preprocessing": {"pixdim": [1, 1, 1]},
    }
    other = {**card, "preprocessing": {"pixdim": [2, 2, 2]}}
    ensemble.check_members([card, card], ["a", "b"])
    with pytest.raises(user_error, match=r"Model b differs from a in its card's `preprocessing`"):
        ensemble.check_members([card, other], ["a", "b"])
