import numpy as np
import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer
from transformers import CLIPTextConfig, CLIPTextModel

from detdiffusion.layout.grid import LocationGrid
from detdiffusion.layout.tokenizer import (
    CLIP_VOCAB_SIZE,
    add_layout_tokens,
    extend_text_encoder,
    layout_token_ids,
    load_tokenizer,
    sincos_2d,
)

TEXTS = [
    "An image with (person, wall brick), (playingfield, grass)",
    "a photo of a cat sitting on a dining table!! 123 cafés",
    "don't stop—believing, it's 2024",
]


def test_offline_tokenizer_is_sd15_clip(make_clip_tokenizer) -> None:
    tok = make_clip_tokenizer()
    assert len(tok) == CLIP_VOCAB_SIZE == 49408
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.model_max_length) == (
        49406,
        49407,
        49407,
        77,
    )
    reference = SimpleTokenizer()
    for text in TEXTS:
        assert tok(text).input_ids == [49406, *reference.encode(text), 49407]


def test_load_tokenizer_from_a_stable_diffusion_folder(make_clip_tokenizer, tmp_path) -> None:
    make_clip_tokenizer().save_pretrained(tmp_path / "sd" / "tokenizer")
    tok = load_tokenizer(tmp_path / "sd")
    assert tok(TEXTS[0]).input_ids == make_clip_tokenizer()(TEXTS[0]).input_ids
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"vocab\.json"):
        load_tokenizer(tmp_path / "empty")


def test_layout_tokens_are_single_consecutive_tokens(make_clip_tokenizer) -> None:
    tok = make_clip_tokenizer()
    grid = LocationGrid(8, 8)
    assert add_layout_tokens(tok, grid) == 64 + 3
    assert add_layout_tokens(tok, grid) == 0  # idempotent
    location, attribute = layout_token_ids(tok, grid)
    assert location == list(range(49408, 49408 + 64)) and attribute == [49472, 49473, 49474]
    ids = tok("(cat, <l3><l63>, [hard])", add_special_tokens=False).input_ids
    assert tok.convert_ids_to_tokens(ids) == [
        "(</w>",
        "cat</w>",
        ",</w>",
        "<l3>",
        "<l63>",
        ",</w>",
        "[hard]",
        ")</w>",
    ]


def test_extended_tokenizer_refuses_another_grid(make_clip_tokenizer, tmp_path) -> None:
    tok = make_clip_tokenizer()
    add_layout_tokens(tok, LocationGrid(8, 8))
    tok.save_pretrained(tmp_path / "tok")
    reloaded = load_tokenizer(tmp_path / "tok")
    assert add_layout_tokens(reloaded, LocationGrid(8, 8)) == 0
    with pytest.raises(ValueError, match=r"64 location tokens.*16x16 needs 256"):
        add_layout_tokens(reloaded, LocationGrid(16, 16))


def test_sincos_embedding_is_smooth_over_the_grid() -> None:
    grid = LocationGrid(16, 16)
    emb = sincos_2d(grid, 64)
    assert emb.shape == (256, 64)
    emb = torch.nn.functional.normalize(emb, dim=1)
    sim = emb @ emb.T
    # Neighbours are more alike than far bins; row-major index 0 is (0, 0), 1 is (0, 1), 255 is (15, 15).
    assert sim[0, 1] > sim[0, 5] > sim[0, 255]
    assert sim[0, 16] > sim[0, 255]  # the bin below
    assert sincos_2d(grid, 30).shape == (256, 30)  # dim not divisible by 4: zero-padded


def _tiny_text_encoder() -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
    )
    return CLIPTextModel(config).eval()


def test_text_encoder_grows_with_initialised_rows(make_clip_tokenizer) -> None:
    torch.manual_seed(0)
    tok, grid, encoder = make_clip_tokenizer(), LocationGrid(8, 8), _tiny_text_encoder()
    old = encoder.get_input_embeddings().weight.detach().clone()
    add_layout_tokens(tok, grid)
    extend_text_encoder(encoder, tok, grid)
    weight = encoder.get_input_embeddings().weight.detach()
    assert weight.shape == (len(tok), 32)
    torch.testing.assert_close(weight[:CLIP_VOCAB_SIZE], old)  # existing rows untouched
    location, attribute = layout_token_ids(tok, grid)
    expected = sincos_2d(grid, 32)
    expected = expected / expected.norm(dim=1, keepdim=True) * old.norm(dim=1).mean()
    torch.testing.assert_close(weight[location], expected)
    hard_word = tok("hard", add_special_tokens=False).input_ids
    torch.testing.assert_close(weight[attribute[1]], old[hard_word].mean(0))
    # The grown encoder runs on a layout prompt.
    ids = tok("An image with (cat, <l3><l63>, [hard])", return_tensors="pt").input_ids
    assert encoder(ids).last_hidden_state.shape == (1, ids.shape[1], 32)
    # Growing again is a no-op: trained rows of a checkpoint are kept.
    weight[location[0]] += 1.0
    extend_text_encoder(encoder, tok, grid)
    assert torch.equal(encoder.get_input_embeddings().weight.detach(), weight)


def test_mean_attribute_init(make_clip_tokenizer) -> None:
    tok, grid, encoder = make_clip_tokenizer(), LocationGrid(4, 4), _tiny_text_encoder()
    old = encoder.get_input_embeddings().weight.detach().clone()
    add_layout_tokens(tok, grid)
    extend_text_encoder(encoder, tok, grid, attribute_init="mean")
    _, attribute = layout_token_ids(tok, grid)
    rows = encoder.get_input_embeddings().weight.detach()[attribute]
    np.testing.assert_allclose(rows.numpy(), old.mean(0).expand(3, -1).numpy(), rtol=1e-5, atol=1e-6)
