"""Progress: a bar with rate and ETA on a terminal; plain periodic lines in logs."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture
def progress(package_module):
    return package_module("progress")


def test_a_terminal_gets_a_bar_with_rate_and_eta(progress, monkeypatch, capsys) -> None:
    monkeypatch.setattr(progress, "on_terminal", lambda: True)
    assert list(progress.track(range(5), "epoch 1", unit="batch")) == list(range(5))
    bar = capsys.readouterr().err
    assert "epoch 1: 100%" in bar and "5/5" in bar
    assert "batch/s" in bar and "<00:00" in bar  # the rate, and the elapsed<remaining pair


def test_a_log_gets_plain_lines_with_rate_and_eta(progress, monkeypatch, caplog, capsys) -> None:
    monkeypatch.setattr(progress, "on_terminal", lambda: False)
    monkeypatch.setattr(progress, "PLAIN_EVERY_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger=progress.__name__):
        assert list(progress.track(iter(range(3)), "preprocess", total=3)) == [0, 1, 2]
    lines = [record.getMessage() for record in caplog.records]
    assert lines[0].startswith("preprocess: 1/3 cases,") and "case/s, ETA" in lines[0]
    assert lines[-1].startswith("preprocess: 3/3 cases,")
    assert "\r" not in capsys.readouterr().err
