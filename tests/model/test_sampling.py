import pytest
import torch
from diffusers import DDIMScheduler

from detdiffusion import Layout, LayoutObject
from detdiffusion.model.sampling import denoise, make_scheduler
from tests.model.tiny import tiny_module, tiny_pixel_module

LAYOUT = Layout(
    (LayoutObject("circle", (0.1, 0.2, 0.5, 0.6)), LayoutObject("star", (0.5, 0.5, 0.9, 0.9))), 32, 32
)


def _generators(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_sample_gives_images_in_unit_range_for_layouts_text_and_ids() -> None:
    module = tiny_module()
    images = module.sample([LAYOUT, "a red circle"], num_inference_steps=2, generator=_generators(0, 1))
    assert images.shape == (2, 3, 32, 32)
    assert images.min() >= 0.0 and images.max() <= 1.0
    ids = module.prompt_ids([LAYOUT])
    (text,) = module.layout_tokenizer.decode_windows(ids[0].numpy())
    assert text.startswith("an image with ( circle , <l9>")
    by_ids = module.sample(ids, num_inference_steps=2, generator=_generators(0))
    torch.testing.assert_close(by_ids, images[:1])


def test_an_image_does_not_depend_on_its_batch() -> None:
    module = tiny_pixel_module()
    pair = module.sample([LAYOUT, LAYOUT], num_inference_steps=2, generator=_generators(7, 8))
    alone = module.sample([LAYOUT], num_inference_steps=2, generator=_generators(8))
    torch.testing.assert_close(pair[1:], alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(pair[0], pair[1])


def test_prompts_of_different_lengths_pad_with_empty_windows() -> None:
    module = tiny_module()
    many = Layout(tuple(LayoutObject("circle", (0.1, 0.1, 0.2, 0.2)) for _ in range(20)), 32, 32)
    ids = module.prompt_ids([many, ""])
    assert ids.shape == (2, 2 * 77)
    empty = torch.from_numpy(module.layout_tokenizer.empty_window)
    assert torch.equal(ids[1, 77:], empty) and torch.equal(ids[1, :77], empty)
    assert module.sample([many, ""], num_inference_steps=1).shape == (2, 3, 32, 32)


@pytest.mark.parametrize("name", ["DDIMScheduler", "DPMSolverMultistepScheduler", "EulerDiscreteScheduler"])
def test_any_diffusers_scheduler_by_name(name: str) -> None:
    module = tiny_pixel_module()
    scheduler = make_scheduler(name, module.noise_scheduler.config)
    assert type(scheduler).__name__ == name
    assert scheduler.config.prediction_type == module.noise_scheduler.config.prediction_type
    assert module.sample([LAYOUT], num_inference_steps=2, scheduler=name).isfinite().all()


def test_unknown_scheduler_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown diffusers scheduler 'DDIMSchedular'"):
        make_scheduler("DDIMSchedular", DDIMScheduler().config)


def test_guidance_combines_both_branches() -> None:
    # A denoiser whose output is its text input's mean: guidance must extrapolate from the
    # empty-prompt output towards the prompt's, out = u + s·(c − u), at every step.
    seen = []

    def denoiser(x, t, text):
        seen.append(text.shape[0])
        return torch.zeros_like(x) + text.mean(dim=(1, 2)).view(-1, 1, 1, 1)

    scheduler = DDIMScheduler(num_train_timesteps=1000)
    cond, uncond = torch.full((1, 4, 8), 1.0), torch.zeros(1, 4, 8)
    shape = (1, 2, 4, 4)
    guided = denoise(denoiser, scheduler, cond, uncond, shape, 2, 3.0, torch.Generator().manual_seed(0))
    assert seen == [2, 2]
    plain = denoise(
        lambda x, t, text: torch.full_like(x, 3.0),
        scheduler,
        cond,
        None,
        (1, 2, 4, 4),
        2,
        3.0,
        torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(guided, plain)
    with pytest.raises(ValueError, match="num_inference_steps must be >= 1"):
        denoise(denoiser, scheduler, cond, uncond, (1, 2, 4, 4), 0, 3.0)


def test_sampling_keeps_no_decoder_features() -> None:
    from detdiffusion.heads import InstanceHead

    module = tiny_module(head=InstanceHead(dim=8), num_classes=9)
    module.sample([LAYOUT], num_inference_steps=2)
    assert module.taps._features == {}


def test_a_loaded_model_samples_with_the_same_scheduler_settings(tmp_path) -> None:
    from detdiffusion.model.module import DetDiffusionModule

    module = tiny_pixel_module()
    module.save_pretrained(tmp_path / "export")
    loaded = DetDiffusionModule.from_pretrained(tmp_path / "export")
    name = "DPMSolverMultistepScheduler"
    configs = [dict(make_scheduler(name, m.noise_scheduler.config).config) for m in (module, loaded)]
    for config in configs:
        config.pop("_use_default_values", None)
    assert configs[0] == configs[1]
