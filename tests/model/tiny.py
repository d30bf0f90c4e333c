"""Tiny DetDiffusion models and batches for the model tests."""

from pathlib import Path

import yaml

from detdiffusion.data.datamodule import LayoutDataModule
from detdiffusion.data.dataset import TransformConfig
from detdiffusion.data.shapes import ShapesConfig
from detdiffusion.layout.grid import LocationGrid
from detdiffusion.model.module import DetDiffusionModule

CONF = Path(__file__).parents[1] / "conf" / "detdiffusion.yaml"


def tiny_init(**kwargs) -> dict:
    """The test config's model arguments (latent space, tiny VAE), without its head."""
    init = yaml.safe_load(CONF.read_text())["model"]["init_args"]
    init.pop("head")
    init["grid"] = LocationGrid(**init["grid"])
    return {**init, **kwargs}


def tiny_module(**kwargs) -> DetDiffusionModule:
    return DetDiffusionModule(**tiny_init(**kwargs))


def tiny_pixel_module(**kwargs) -> DetDiffusionModule:
    """Pixel space (no VAE), as the shapes experiment."""
    init = tiny_init()
    init["unet"] = {**init["unet"], "sample_size": 32, "in_channels": 3, "out_channels": 3}
    return DetDiffusionModule(**{**init, "vae": None, **kwargs})


def tiny_batch(module: DetDiffusionModule) -> dict:
    dm = LayoutDataModule(
        shapes=ShapesConfig(num_train=8, num_val=2, size=32),
        transform=TransformConfig(size=32),
        batch_size=4,
        num_workers=0,
        grid=module.layout_tokenizer.builder.grid,
    )
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))
