"""Spatial layout conditioning: box maps on zero-initialised extra UNet input channels."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detdiffusion import Layout, LayoutObject
from detdiffusion.cli import main
from detdiffusion.generation import LayoutDiffusionPipeline
from detdiffusion.model.module import DetDiffusionModule
from detdiffusion.model.spatial import channel_table, rasterize_boxes
from tests.model.tiny import CONF, tiny_batch, tiny_module, tiny_pixel_module

GENERATE = Path(__file__).parents[1] / "conf" / "generate.yaml"
SHAPES_IDS = [1, 2, 3, 4, 5]  # the shapes' thing classes; stuff (101..) gets no channel
LAYOUT = Layout(
    (
        LayoutObject("circle", (0.1, 0.2, 0.5, 0.6), category_id=1),
        LayoutObject("sky", (0.0, 0.0, 1.0, 0.3), category_id=101, is_stuff=True),
    ),
    32,
    32,
    image_id=7,
)
MOVED = Layout((LayoutObject("circle", (0.5, 0.4, 0.9, 0.8), category_id=1),), 32, 32, image_id=7)


def _perturb_map_weights(module: DetDiffusionModule, latent: int) -> None:
    """Non-zero box-map weights (as after training), so that the maps change the images."""
    for unet in (module.unet, module.ema_unet):
        if unet is not None:
            with torch.no_grad():
                unet.conv_in.weight[:, latent:] = torch.randn_like(unet.conv_in.weight[:, latent:])


def test_rasterize_boxes_by_hand() -> None:
    boxes = torch.tensor(
        [
            [
                [0.25, 0.0, 0.5, 0.5],  # label 0 -> channel 1: x 2..3, y 0..3
                [0.375, 0.25, 0.75, 0.75],  # label 0 again, overlapping: x 3..5, y 2..5
                [0.30, 0.30, 0.31, 0.31],  # label 1 -> channel 0: thinner than a pixel, one pixel (2, 2)
                [0.0, 0.0, 1.0, 1.0],  # label 2: no channel, ignored
                [0.0, 0.0, 1.0, 1.0],  # label 99: outside the table, ignored
            ],
            [
                [0.0625, 0.0625, 0.1875, 1.0],  # edges on pixel centres: lower in, upper out: x 0, y 0..7
                [0.0, 0.0, 1.0, 1.0],  # padding (invalid), though its label has a channel
                [0.0, 0.0, 1.0, 1.0],  # padding, label -1
                [0.0, 0.0, 0.0, 0.0],
                [0.0, 0.0, 0.0, 0.0],
            ],
        ]
    )
    labels = torch.tensor([[0, 0, 1, 2, 99], [1, 0, -1, -1, -1]])
    valid = torch.tensor([[True] * 5, [True, False, False, False, False]])
    channel_of = torch.tensor([1, 0, -1])
    maps = rasterize_boxes(boxes, labels, valid, channel_of, 2, 8, 8)
    expected = np.zeros((2, 2, 8, 8), dtype=np.float32)
    expected[0, 1, 0:4, 2:4] = 1
    expected[0, 1, 2:6, 3:6] = 1
    expected[0, 0, 2, 2] = 1
    expected[1, 0, 0:8, 0:1] = 1
    np.testing.assert_array_equal(maps.numpy(), expected)
    # Category ids through the table: the channel is the id's place in the list.
    np.testing.assert_array_equal(channel_table([5, 2]).numpy(), [-1, -1, 1, -1, -1, 0])


def test_zero_init_leaves_the_unet_as_it_was() -> None:
    torch.manual_seed(0)
    plain = tiny_pixel_module(ema_decay=0.9)
    torch.manual_seed(0)
    spatial = tiny_pixel_module(ema_decay=0.9, spatial_conditioning=SHAPES_IDS)
    for unet in (spatial.unet, spatial.ema_unet):
        assert unet.conv_in.in_channels == unet.config.in_channels == 3 + 5
        assert unet.config.out_channels == 3 and not unet.conv_in.weight[:, 3:].any()
    x, text = torch.randn(2, 3, 32, 32), torch.randn(2, 77, 32)
    maps = (torch.rand(2, 5, 32, 32) > 0.5).float()
    t = torch.tensor([10, 500])
    torch.testing.assert_close(
        spatial.unet(torch.cat([x, maps], 1), t, text).sample, plain.unet(x, t, text).sample, rtol=0, atol=0
    )
    # Everything else is the same model: no random numbers were drawn for the new channels.
    a, b = plain.state_dict(), spatial.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        if not k.endswith("conv_in.weight"):
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_a_dropped_caption_drops_the_maps() -> None:
    module = tiny_module(spatial_conditioning=SHAPES_IDS)
    batch = tiny_batch(module)
    module.label_category_ids = [1, 2, 3, 4, 5, 101, 102, 103, 104]  # what setup reads from the datamodule
    batch["prompt_dropped"] = torch.tensor([True, False, False, False])
    seen = []
    module.unet.conv_in.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach()))
    module._losses(batch)
    (x,) = seen
    assert x.shape == (4, 4 + 5, 16, 16)
    maps = x[:, 4:]
    assert not maps[0].any()
    things = (batch["labels"][1:] < 5) & batch["object_mask"][1:]  # labels 0..4: ids 1..5
    assert things.any(1).all() and maps[1:].flatten(1).amax(1).eq(1).all()
    assert set(maps.unique().tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("scheduler", ["DDIMScheduler", "EulerDiscreteScheduler"])
def test_the_negative_branch_gets_zero_maps(scheduler: str) -> None:
    module = tiny_pixel_module(spatial_conditioning=SHAPES_IDS).eval()
    seen = []
    module.unet.conv_in.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach()))
    module.generate([LAYOUT, MOVED], num_inference_steps=2, guidance_scale=3.0, scheduler=scheduler)
    assert len(seen) == 2
    for x in seen:
        assert x.shape == (4, 3 + 5, 32, 32)
        negative, positive = x[:2, 3:], x[2:, 3:]
        assert not negative.any()
        # Unscaled by the scheduler: the circle (id 1, channel 0) only; the sky has no channel.
        assert set(positive.unique().tolist()) == {0.0, 1.0} and not positive[:, 1:].any()
        assert positive[0, 0, 6:19, 3:16].all() and positive[0, 0].sum() == 13 * 13
        assert positive[1, 0, 13:26, 16:29].all() and positive[1, 0].sum() == 13 * 13


def test_boxes_move_the_image_and_an_export_generates_the_same(tmp_path: Path) -> None:
    module = tiny_module(spatial_conditioning=SHAPES_IDS, ema_decay=0.9)
    _perturb_map_weights(module, 4)
    module.eval()
    kwargs = {"num_inference_steps": 2, "output_type": "pt", "progress": False}
    ours = module.pipeline()([LAYOUT, MOVED], **kwargs).images
    assert (ours[0] - ours[1]).abs().max() > 1e-3  # same prompt tokens but for the box: maps matter
    module.save_pretrained(tmp_path / "export")
    settings = json.loads((tmp_path / "export" / "detdiffusion.json").read_text())
    assert settings["spatial_conditioning"] == SHAPES_IDS
    assert json.loads((tmp_path / "export" / "unet" / "config.json").read_text())["in_channels"] == 9
    exported = LayoutDiffusionPipeline.from_export(str(tmp_path / "export"))
    assert exported.spatial_conditioning == tuple(SHAPES_IDS)
    torch.testing.assert_close(exported([LAYOUT, MOVED], **kwargs).images, ours)


def test_clear_errors() -> None:
    module = tiny_pixel_module(spatial_conditioning=[1])
    with pytest.raises(ValueError, match=r"object 0 \('circle'\) has no category_id"):
        module.sample([Layout((LayoutObject("circle", (0.1, 0.1, 0.5, 0.5)),), 32, 32)], 1)
    with pytest.raises(ValueError, match=r"token ids needs the batch's boxes and labels"):
        module.sample(module.prompt_ids(["a circle"]), 1)
    with pytest.raises(ValueError, match="non-empty list of category ids"):
        tiny_pixel_module(spatial_conditioning=[])
    with pytest.raises(ValueError, match="lists a category id twice"):
        tiny_pixel_module(spatial_conditioning=[1, 1])
    # A spatially conditioned UNet without the ids it was trained with.
    unet = {**tiny_pixel_module().hparams.unet, "in_channels": 8}
    with pytest.raises(ValueError, match=r"takes 8 input channels; expected 3 \(image channels\) plus 0"):
        tiny_pixel_module(unet=unet)


@pytest.fixture(scope="module")
def spatial_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("spatial-fit")
    main(
        [
            "fit",
            "--config",
            str(CONF),
            f"--trainer.default_root_dir={root}",
            "--trainer.max_steps=2",
            "--trainer.enable_checkpointing=true",
            "--trainer.limit_val_batches=0",
            f"--model.init_args.spatial_conditioning={SHAPES_IDS}",
            "--model.init_args.ema_decay=0.5",
        ]
    )
    (ckpt,) = root.glob("**/*.ckpt")
    return ckpt


def test_cli_fit_checkpoint_restores_the_channels(spatial_checkpoint: Path) -> None:
    module = DetDiffusionModule.load_from_checkpoint(spatial_checkpoint)
    assert module.spatial_ids == tuple(SHAPES_IDS)
    for unet in (module.unet, module.ema_unet):
        assert unet.conv_in.in_channels == unet.config.in_channels == 4 + 5
        # Trained (the average one step behind): the maps reached the UNet.
        assert unet.conv_in.weight[:, 4:].any()
    state = torch.load(spatial_checkpoint, weights_only=True)["state_dict"]
    torch.testing.assert_close(module.ema_unet.conv_in.weight, state["ema_unet.conv_in.weight"])
    with pytest.raises(
        ValueError, match=r"spatial_conditioning is \[1, 2, 3, 4, 5\] .*this model's is \[1, 2\]"
    ):
        DetDiffusionModule.load_from_checkpoint(spatial_checkpoint, spatial_conditioning=[1, 2])
    with pytest.raises(ValueError, match=r"this model's is None \(UNet conv_in with 4 input channels\)"):
        DetDiffusionModule.load_from_checkpoint(spatial_checkpoint, spatial_conditioning=None)


def test_predict_draws_the_layouts_boxes(spatial_checkpoint: Path, tmp_path: Path) -> None:
    # Map weights as after longer training, so that the boxes visibly change the images.
    ckpt = torch.load(spatial_checkpoint, weights_only=True)
    for key in ("unet.conv_in.weight", "ema_unet.conv_in.weight"):
        ckpt["state_dict"][key][:, 4:] = torch.randn_like(ckpt["state_dict"][key][:, 4:])
    torch.save(ckpt, tmp_path / "trained.ckpt")
    boxes = {41: (0.1, 0.2, 0.5, 0.6), 42: (0.5, 0.4, 0.9, 0.8)}  # the same circle in two places
    layouts = tmp_path / "layouts.json"
    layouts.write_text(
        json.dumps(
            {
                "images": [{"id": i, "file_name": f"{i}.png", "width": 32, "height": 32} for i in boxes],
                "annotations": [
                    {
                        "id": i,
                        "image_id": i,
                        "category_id": 1,
                        "bbox": [x0 * 32, y0 * 32, (x1 - x0) * 32, (y1 - y0) * 32],
                    }
                    for i, (x0, y0, x1, y1) in boxes.items()
                ],
                "categories": [{"id": 1, "name": "circle"}],
            }
        )
    )
    out = tmp_path / "syn"
    main(
        [
            "predict",
            "--config",
            str(GENERATE),
            f"--ckpt_path={tmp_path / 'trained.ckpt'}",
            f"--data.output_dir={out}",
            f"--data.layouts={layouts}",
            "--data.shapes=null",
            "--data.samples_per_layout=1",
        ]
    )
    coco = json.loads((out / "annotations.json").read_text())
    written = [np.asarray(Image.open(out / i["file_name"])).astype(int) for i in coco["images"]]
    assert np.abs(written[0] - written[1]).max() > 2
    # The pipeline on the same layouts, seeds and settings (tests/conf/generate.yaml) draws the same.
    module = DetDiffusionModule.load_from_checkpoint(tmp_path / "trained.ckpt").eval()
    expected = module.generate(
        [
            Layout((LayoutObject("circle", box, category_id=1, annotation_id=i),), 32, 32, image_id=i)
            for i, box in boxes.items()
        ],
        num_inference_steps=2,
        guidance_scale=2.0,
        progress=False,
    )
    for image, mine in zip(expected, written, strict=True):
        assert np.abs(np.asarray(image).astype(int) - mine).max() <= 1
