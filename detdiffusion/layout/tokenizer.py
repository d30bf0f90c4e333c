"""The CLIP tokenizer with location and attribute tokens, and the text encoder grown to match."""

from __future__ import annotations

import gzip
import logging
import re
from pathlib import Path
from typing import Literal

import torch
from transformers import CLIPTextModel, CLIPTokenizer

from detdiffusion.layout.grid import LocationGrid
from detdiffusion.layout.prompt import ATTRIBUTE_TOKENS

log = logging.getLogger(__name__)

#: Size of the CLIP BPE vocabulary of Stable Diffusion 1.x (and open_clip).
CLIP_VOCAB_SIZE = 49408
_LOCATION = re.compile(r"^<l(\d+)>$")


def clip_tokenizer_from_open_clip(model_max_length: int = 77) -> CLIPTokenizer:
    """Stable Diffusion 1.x's CLIP tokenizer, built offline from the BPE file in ``open_clip``.

    The vocabulary is built the way ``open_clip.tokenizer.SimpleTokenizer`` (and OpenAI's
    CLIP) builds it: 256 byte symbols, the same with ``</w>``, 48,894 merges, then the two
    special tokens: 49,408 tokens, the ids of SD 1.x's ``tokenizer/vocab.json``.
    """
    try:
        from open_clip.tokenizer import bytes_to_unicode, default_bpe
    except ImportError as e:  # pragma: no cover - open_clip is a dependency
        raise ImportError(
            "building the CLIP tokenizer offline needs open_clip: pip install open_clip_torch"
        ) from e
    with gzip.open(default_bpe()) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(
        vocab={token: i for i, token in enumerate(vocab)}, merges=merges, model_max_length=model_max_length
    )


def load_tokenizer(source: str | Path | None = None) -> CLIPTokenizer:
    """A CLIP tokenizer from a local folder, or SD 1.x's built offline when ``source`` is None.

    Args:
        source: a diffusers Stable Diffusion folder (its ``tokenizer/`` is used), a tokenizer
            folder (``vocab.json`` + ``merges.txt``, or a saved extended tokenizer), or None.
    """
    if source is None:
        return clip_tokenizer_from_open_clip()
    path = Path(source).expanduser()
    if (path / "tokenizer").is_dir():
        path = path / "tokenizer"
    if not path.is_dir():
        raise FileNotFoundError(
            f"tokenizer folder {path} does not exist: pass a local Stable Diffusion folder "
            "(with tokenizer/), a tokenizer folder, or None for SD 1.x's CLIP tokenizer built offline"
        )
    if not ((path / "tokenizer.json").is_file() or (path / "vocab.json").is_file()):
        raise FileNotFoundError(f"{path} holds no tokenizer.json or vocab.json + merges.txt")
    return CLIPTokenizer.from_pretrained(path, local_files_only=True)


def layout_tokens(grid: LocationGrid) -> list[str]:
    """The tokens a layout vocabulary adds: location tokens in index order, then attribute tokens."""
    return grid.tokens + list(ATTRIBUTE_TOKENS.values())


def add_layout_tokens(tokenizer: CLIPTokenizer, grid: LocationGrid) -> int:
    """Add the location and attribute tokens of ``grid`` to ``tokenizer``; return how many were new.

    A tokenizer already extended for the same grid is left as it is; one extended for another
    grid is refused with both sizes shown.
    """
    vocab = tokenizer.get_vocab()
    present = sorted(int(m.group(1)) for t in vocab if (m := _LOCATION.match(t)))
    if present and len(present) != grid.num_tokens:
        raise ValueError(
            f"tokenizer already holds {len(present)} location tokens, the layout grid "
            f"{grid.h_bins}x{grid.w_bins} needs {grid.num_tokens}: use the grid it was extended for"
        )
    added = tokenizer.add_tokens([t for t in layout_tokens(grid) if t not in vocab])
    ids = tokenizer.convert_tokens_to_ids(layout_tokens(grid))
    if ids != list(range(ids[0], ids[0] + len(ids))):
        raise ValueError(
            "layout tokens must have consecutive ids; the tokenizer holds a conflicting added token"
        )
    return added


def layout_token_ids(tokenizer: CLIPTokenizer, grid: LocationGrid) -> tuple[list[int], list[int]]:
    """Ids of the location tokens (index order) and of the attribute tokens."""
    ids = tokenizer.convert_tokens_to_ids(layout_tokens(grid))
    if tokenizer.unk_token_id in ids:
        raise ValueError(f"the tokenizer lacks the layout tokens of a {grid.h_bins}x{grid.w_bins} grid")
    return ids[: grid.num_tokens], ids[grid.num_tokens :]


def sincos_2d(grid: LocationGrid, dim: int) -> torch.Tensor:
    """2-D sin-cos embedding of the grid's bins, ``(h_bins * w_bins, dim)`` row-major (MAE, GeoDiffusion).

    Half of the channels encode the column, half the row; each half is ``[sin(p·ω), cos(p·ω)]``
    with ``ω_k = 10000^(-k / (dim/4))``. Channels left over when ``dim % 4 != 0`` are zero.
    """
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / max(quarter, 1))
    rows, cols = torch.meshgrid(
        torch.arange(grid.h_bins, dtype=torch.float64),
        torch.arange(grid.w_bins, dtype=torch.float64),
        indexing="ij",
    )

    def one_axis(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega  # (N, dim/4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (N, dim/2)

    emb = torch.cat([one_axis(cols), one_axis(rows)], dim=1)
    return torch.nn.functional.pad(emb, (0, dim - emb.shape[1])).float()


def extend_text_encoder(
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    grid: LocationGrid,
    attribute_init: Literal["word", "mean"] = "word",
) -> None:
    """Grow ``text_encoder``'s token embeddings to the extended tokenizer and initialise the new rows.

    Location rows get the grid's 2-D sin-cos embedding (GeoDiffusion), rescaled to the mean
    norm of the existing rows: raw sin-cos rows have norm ``sqrt(dim/2)``, tens of times
    CLIP's, and would swamp the words around them. Attribute rows: ``word`` (default) starts
    each from the embedding of its word (``[hard]`` from ``hard``), so it carries meaning
    from the first step; ``mean`` starts all from the mean row.

    Rows of tokens the encoder already has (a checkpoint extended before) are left alone.
    """
    embeddings = text_encoder.get_input_embeddings()
    old_size = embeddings.weight.shape[0]
    new_size = len(tokenizer)
    if new_size < old_size:
        raise ValueError(f"text encoder has {old_size} token rows, more than the tokenizer's {new_size}")
    if new_size == old_size:
        return
    # Every new row is set below, so skip transformers' mean-and-covariance initialisation.
    text_encoder.resize_token_embeddings(new_size, mean_resizing=False)
    weight = text_encoder.get_input_embeddings().weight
    location_ids, attribute_ids = layout_token_ids(tokenizer, grid)
    with torch.no_grad():
        base = weight[: min(old_size, CLIP_VOCAB_SIZE)]
        mean_norm = base.norm(dim=1).mean()
        sincos = sincos_2d(grid, weight.shape[1]).to(weight)
        sincos = sincos * (mean_norm / sincos.norm(dim=1, keepdim=True).clamp_min(1e-8))
        fresh = torch.arange(old_size, new_size)
        loc = torch.as_tensor(location_ids)
        keep = torch.isin(loc, fresh)
        weight[loc[keep]] = sincos[keep]
        for attribute_id, token in zip(attribute_ids, ATTRIBUTE_TOKENS.values(), strict=True):
            if attribute_id < old_size:
                continue
            word_ids = tokenizer(token.strip("[]"), add_special_tokens=False).input_ids
            word_ids = [i for i in word_ids if i < old_size]
            if attribute_init == "word" and word_ids:
                weight[attribute_id] = weight[word_ids].mean(dim=0)
            else:
                weight[attribute_id] = base.mean(dim=0)
    log.info(
        "text encoder embeddings grown %d → %d rows (%d location, %d attribute)",
        old_size,
        new_size,
        int(keep.sum()),
        len(attribute_ids),
    )
