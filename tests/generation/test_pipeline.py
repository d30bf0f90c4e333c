import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from detdiffusion import Layout, LayoutObject
from detdiffusion.generation import LayoutDiffusionPipeline, apply_strategy, image_seed
from detdiffusion.layout.types import Attribute
from detdiffusion.viz import draw_layout
from tests.model.tiny import tiny_module, tiny_pixel_module

THING = LayoutObject("circle", (0.1, 0.2, 0.5, 0.6), "easy", category_id=1, annotation_id=10)
STUFF = LayoutObject(
    "sky", (0.0, 0.0, 1.0, 0.5), "background", category_id=101, is_stuff=True, annotation_id=11
)
LAYOUT = Layout((THING, STUFF), 32, 32, image_id=5)
OTHER = Layout((LayoutObject("star", (0.5, 0.5, 0.9, 0.9), annotation_id=12),), 32, 32, image_id=6)


def test_strategies_set_thing_attributes_and_keep_stuff_background() -> None:
    assert apply_strategy(LAYOUT, "origin") == LAYOUT
    hard = apply_strategy(LAYOUT, "hard")
    assert [o.attribute for o in hard.objects] == [Attribute.HARD, Attribute.BACKGROUND]
    overridden = apply_strategy(LAYOUT, "hard", {10: "easy", 999: "hard"})
    assert overridden.objects[0].attribute is Attribute.EASY
    with pytest.raises(ValueError, match="unknown strategy 'medium'; expected one of origin, easy, hard"):
        apply_strategy(LAYOUT, "medium")


def test_image_seeds_depend_on_layout_sample_and_base_seed_only() -> None:
    seeds = {image_seed(b, i, k) for b in (0, 1) for i in (5, 6) for k in (0, 1)}
    assert len(seeds) == 8
    assert image_seed(0, 5, 1) == image_seed(0, 5, 1)
    assert all(0 <= s < 2**63 for s in seeds)


@pytest.mark.parametrize("scheduler", ["DDIMScheduler", "DDPMScheduler"])
def test_an_image_does_not_depend_on_its_batch(scheduler: str) -> None:
    # DDPM draws step noise too: from the image's own generator, not the global one.
    pipe = LayoutDiffusionPipeline.from_module(tiny_pixel_module())
    kwargs = {"num_inference_steps": 3, "scheduler": scheduler, "output_type": "pt", "progress": False}
    pair = pipe([LAYOUT, OTHER], seed=3, **kwargs)
    torch.manual_seed(123)
    alone = pipe([OTHER], seed=3, **kwargs)
    # Batched matrix products round differently: far below one 8-bit level (0.004).
    torch.testing.assert_close(pair.images[1:], alone.images, atol=1e-4, rtol=1e-4)
    assert pair.seeds[1] == alone.seeds[0] == image_seed(3, 6, 0)
    assert not torch.allclose(pair.images[0], pair.images[1])
    other_sample = pipe([OTHER], seed=3, sample_index=1, **kwargs)
    assert not torch.allclose(other_sample.images, alone.images)


def test_strategy_and_negative_prompt_change_the_image() -> None:
    pipe = LayoutDiffusionPipeline.from_module(tiny_pixel_module())
    kwargs = {"num_inference_steps": 2, "output_type": "pt", "progress": False}
    easy = pipe(LAYOUT, "easy", **kwargs)
    hard = pipe(LAYOUT, "hard", **kwargs)
    assert [o.attribute for o in hard.layouts[0].objects] == [Attribute.HARD, Attribute.BACKGROUND]
    assert not torch.allclose(easy.images, hard.images)
    negative = pipe(LAYOUT, "easy", negative_prompt="a blurry image", **kwargs)
    assert not torch.allclose(easy.images, negative.images)
    unguided = pipe(LAYOUT, "easy", negative_prompt="a blurry image", guidance_scale=1.0, **kwargs)
    torch.testing.assert_close(unguided.images, pipe(LAYOUT, "easy", guidance_scale=1.0, **kwargs).images)


def test_module_generate_returns_pil_images_to_draw_boxes_on() -> None:
    module = tiny_pixel_module()
    images = module.generate([LAYOUT, OTHER], strategy="hard", num_inference_steps=1, progress=False)
    assert [im.size for im in images] == [(32, 32), (32, 32)]
    drawn = draw_layout(images[0], apply_strategy(LAYOUT, "hard"), tile=64)
    assert drawn.size == (64, 64)


def test_dropped_objects_leave_the_returned_layout() -> None:
    module = tiny_pixel_module(long_prompts="drop_smallest")
    many = Layout(
        tuple(LayoutObject("circle", (0.01 * i, 0.0, 0.01 * i + 0.02 + 0.001 * i, 0.5)) for i in range(20)),
        32,
        32,
    )
    out = module.pipeline()(many, num_inference_steps=1, progress=False)
    kept = out.layouts[0].objects
    assert 0 < len(kept) < 20
    assert [o.box for o in kept] == sorted(
        (o.box for o in kept), key=lambda b: many.boxes().tolist().index(list(b))
    )


def test_same_images_as_a_plain_stable_diffusion_pipeline() -> None:
    module = tiny_module().eval()
    pipe = LayoutDiffusionPipeline.from_module(module)
    ids, negative, _ = pipe.prompt_ids([LAYOUT, OTHER])
    ours = pipe.generate_ids(
        ids, negative, 3, 4.0, generator=[torch.Generator().manual_seed(s) for s in (1, 2)]
    )
    plain = StableDiffusionPipeline(
        vae=module.vae,
        text_encoder=module.text_encoder,
        tokenizer=module.layout_tokenizer.tokenizer,
        unet=module.unet,
        scheduler=DDIMScheduler.from_config(pipe.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    plain.set_progress_bar_config(disable=True)
    theirs = plain(
        prompt_embeds=pipe.encode_ids(ids),
        negative_prompt_embeds=pipe.encode_ids(negative.expand(2, -1)),
        num_inference_steps=3,
        guidance_scale=4.0,
        height=32,
        width=32,
        generator=[torch.Generator().manual_seed(s) for s in (1, 2)],
        output_type="pt",
    ).images
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_layout_ids_survive_a_padding_call_on_the_shared_tokenizer() -> None:
    # StableDiffusionPipeline tokenizes with padding="max_length", truncation=True, which stays set
    # on the fast tokenizer's backend; layout prompts must not pick it up.
    module = tiny_module()
    before = module.layout_tokenizer.encode(LAYOUT).input_ids.copy()
    module.layout_tokenizer.tokenizer(["a circle"], padding="max_length", max_length=77, truncation=True)
    assert (module.layout_tokenizer.encode(LAYOUT).input_ids == before).all()
