import json

import numpy as np
import pytest
import torch

from detdiffusion.heads import InstanceHead, SemanticHead
from detdiffusion.layout.grid import LocationGrid
from detdiffusion.model.module import DetDiffusionModule
from tests.model.test_sampling import LAYOUT
from tests.model.tiny import tiny_batch, tiny_module, tiny_pixel_module


def _assert_same_module(a: DetDiffusionModule, b: DetDiffusionModule) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)
    assert a.layout_tokenizer.tokenizer.get_vocab() == b.layout_tokenizer.tokenizer.get_vocab()
    assert a.layout_tokenizer.builder == b.layout_tokenizer.builder
    images = [m.sample([LAYOUT], 2, generator=torch.Generator().manual_seed(0)) for m in (a, b)]
    torch.testing.assert_close(*images)


def test_round_trip_gives_the_same_module(tmp_path) -> None:
    module = tiny_module(
        head=SemanticHead(dim=8, supervise_absent=False),
        categories=["circle", "square", "triangle"],
        class_names={"circle": "round thing"},
        grid=LocationGrid(4, 6),
        pa_weight=0.05,
    )
    module.save_pretrained(tmp_path / "export")
    loaded = DetDiffusionModule.from_pretrained(tmp_path / "export")
    _assert_same_module(module, loaded)
    assert loaded.layout_tokenizer.builder.class_name("circle") == "round thing"
    assert isinstance(loaded.head, SemanticHead) and loaded.head.supervise_absent is False
    assert loaded.hparams.pa_weight == 0.05 and loaded.hparams.categories == ["circle", "square", "triangle"]
    settings = json.loads((tmp_path / "export" / "detdiffusion.json").read_text())
    assert settings["grid"] == {"h_bins": 4, "w_bins": 6} and settings["attribute_tokens"]["hard"] == "[hard]"


def test_pixel_space_round_trip(tmp_path) -> None:
    module = tiny_pixel_module(head=InstanceHead(dim=8), num_classes=9)
    module.save_pretrained(tmp_path / "export")
    assert not (tmp_path / "export" / "vae").exists()
    _assert_same_module(module, DetDiffusionModule.from_pretrained(tmp_path / "export"))


def test_diffusers_alone_generates_from_layout_prompts(tmp_path) -> None:
    from diffusers import StableDiffusionPipeline

    module = tiny_module()
    module.save_pretrained(tmp_path / "export")
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "export", local_files_only=True)
    prompt = module.layout_tokenizer.encode(LAYOUT).prompt
    # The pipeline's tokenizer knows the layout tokens: same ids as the module's.
    ids = pipe.tokenizer(prompt, padding="max_length", max_length=77, return_tensors="np").input_ids[0]
    np.testing.assert_array_equal(ids, module.layout_tokenizer.encode(LAYOUT).input_ids)
    out = pipe(prompt, num_inference_steps=2, height=32, width=32, output_type="np")
    assert out.images.shape == (1, 32, 32, 3) and np.isfinite(out.images).all()


def test_export_uses_the_ema_unet(tmp_path) -> None:
    module = tiny_module(ema_decay=0.5)
    with torch.no_grad():
        module.unet.conv_in.weight.add_(1.0)  # the average now differs from the UNet
    module.save_pretrained(tmp_path / "ema")
    loaded = DetDiffusionModule.from_pretrained(tmp_path / "ema")
    torch.testing.assert_close(loaded.unet.conv_in.weight, module.ema_unet.conv_in.weight)
    module.save_pretrained(tmp_path / "raw", ema=False)
    raw = DetDiffusionModule.from_pretrained(tmp_path / "raw")
    torch.testing.assert_close(raw.unet.conv_in.weight, module.unet.conv_in.weight)


def test_export_replaces_an_export_but_not_other_folders(tmp_path) -> None:
    module = tiny_pixel_module()
    module.save_pretrained(tmp_path / "export")
    module.save_pretrained(tmp_path / "export")  # again: replaced whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not a DetDiffusion export"):
        module.save_pretrained(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_loading_with_another_grid_is_refused_with_both_values(tmp_path) -> None:
    tiny_pixel_module().save_pretrained(tmp_path / "export")  # an 8x8 grid
    with pytest.raises(ValueError, match=r"64 location tokens, the layout grid 16x16 needs 256"):
        DetDiffusionModule.from_pretrained(tmp_path / "export", grid=LocationGrid(16, 16))
    with pytest.raises(FileNotFoundError, match="not a DetDiffusion export"):
        DetDiffusionModule.from_pretrained(tmp_path)


def test_checkpoint_with_another_grid_is_refused_with_both_values(tmp_path) -> None:
    import lightning as L

    module = tiny_module()
    trainer = L.Trainer(logger=False, enable_checkpointing=False, max_steps=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    with pytest.raises(ValueError, match=r"checkpoint grid 8x8, 49475 tokens.*model grid 4x4, 49427 tokens"):
        DetDiffusionModule.load_from_checkpoint(tmp_path / "m.ckpt", grid=LocationGrid(4, 4))


def test_ema_follows_the_unet_and_a_checkpoint_without_one_seeds_it() -> None:
    from detdiffusion.model.ema import ema_decay, update_ema

    assert ema_decay(0, 0.999) == pytest.approx(0.1) and ema_decay(10**6, 0.999) == 0.999
    module = tiny_module(ema_decay=0.9)
    assert not any(p.requires_grad for p in module.ema_unet.parameters())
    before = module.ema_unet.conv_in.weight.clone()
    with torch.no_grad():
        module.unet.conv_in.weight.add_(1.0)
    update_ema(module.ema_unet, module.unet, 0.75)
    torch.testing.assert_close(module.ema_unet.conv_in.weight, before + 0.25)

    plain = tiny_module().state_dict()
    checkpoint = {"state_dict": plain}
    module.on_load_checkpoint(checkpoint)
    assert torch.equal(checkpoint["state_dict"]["ema_unet.conv_in.weight"], plain["unet.conv_in.weight"])
    module.load_state_dict(checkpoint["state_dict"])


def test_ema_is_updated_once_per_optimizer_step() -> None:
    module = tiny_module(ema_decay=0.9)
    batch = tiny_batch(module)
    optimizer = torch.optim.SGD(module.unet.parameters(), lr=0.1)
    before = module.ema_unet.conv_in.weight.clone()
    module._losses(batch)["loss"].backward()
    optimizer.step()
    module.on_before_zero_grad(optimizer)
    # First step: decay (1 + 0) / (10 + 0) = 0.1, so the average moves 90% of the way.
    expected = 0.1 * before + 0.9 * module.unet.conv_in.weight
    torch.testing.assert_close(module.ema_unet.conv_in.weight, expected)


def test_a_module_built_in_python_checkpoints_and_loads_safely(tmp_path) -> None:
    import functools

    import lightning as L

    module = tiny_module(
        head=InstanceHead(dim=8),
        num_classes=9,
        grid=LocationGrid(4, 4),
        optimizer=functools.partial(torch.optim.AdamW, betas=(0.8, 0.99)),
    )
    trainer = L.Trainer(logger=False, enable_checkpointing=False, max_steps=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    hparams = torch.load(tmp_path / "m.ckpt", weights_only=True)["hyper_parameters"]  # plain data only
    assert hparams["head"] == {
        "class_path": "detdiffusion.heads.instance.InstanceHead",
        "init_args": {"dim": 8},
    }
    loaded = DetDiffusionModule.load_from_checkpoint(tmp_path / "m.ckpt")
    assert loaded.layout_tokenizer.builder.grid == LocationGrid(4, 4) and loaded.head.dim == 8
    assert loaded.optimizer_factory.keywords == {"betas": (0.8, 0.99)}
    torch.testing.assert_close(loaded.head.state_dict(), module.head.state_dict())
