"""Shared fixtures: offline, two threads, seeded, and a small shapes dataset made once per session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

# Nothing in the test suite may reach the network or write to the user's cache.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture(autouse=True)
def _offline_seeded(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    monkeypatch.setenv("DETDIFFUSION_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    torch.set_num_threads(2)
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def make_clip_tokenizer():
    """Builds SD 1.x's CLIP tokenizer offline from open_clip's BPE (call it: tokenizers are mutable)."""
    from detdiffusion.layout.tokenizer import clip_tokenizer_from_open_clip

    return clip_tokenizer_from_open_clip


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small shapes dataset (24 train, 8 val, 64 px), made once per test session."""
    from detdiffusion.data.shapes import ShapesConfig, generate_shapes

    return generate_shapes(
        tmp_path_factory.mktemp("shapes") / "ds",
        ShapesConfig(num_train=24, num_val=8, size=64),
        progress=False,
    )


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DetDiffusion (tests/conf/detdiffusion.yaml) trained one step through the CLI."""
    from detdiffusion.cli import main
    from tests.model.tiny import CONF

    root = tmp_path_factory.mktemp("fit")
    main(
        [
            "fit",
            "--config",
            str(CONF),
            f"--trainer.default_root_dir={root}",
            "--trainer.max_steps=1",
            "--trainer.enable_checkpointing=true",
            "--trainer.limit_val_batches=0",
        ]
    )
    (ckpt,) = root.glob("**/*.ckpt")
    return ckpt
