"""Layouts to token ids within CLIP's 77-token windows, by an explicit policy, never by truncation."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from transformers import CLIPTokenizer

from detdiffusion.layout.prompt import PromptBuilder
from detdiffusion.layout.tokenizer import add_layout_tokens
from detdiffusion.layout.types import Layout, LongPromptPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodedLayout:
    """A layout's prompt as token ids.

    Attributes:
        prompt: the prompt text (without dropped objects).
        input_ids: ``(num_windows * window,)`` ids; each window is BOS, tokens, EOS, padding.
        object_index: ``(num_windows * window,)`` the position in ``kept`` of the object each
            token belongs to, ``-1`` for template words, BOS, EOS and padding.
        num_windows: number of windows used.
        kept: indices of the layout objects the prompt holds, in prompt order.
        dropped: number of objects the ``drop_smallest`` policy left out.
    """

    prompt: str
    input_ids: np.ndarray
    object_index: np.ndarray
    num_windows: int
    kept: tuple[int, ...]
    dropped: int = 0


@dataclass(frozen=True)
class TokenBudget:
    """Token counts of one layout's prompt.

    Attributes:
        prompt: the prompt text.
        tokens: tokens of the whole prompt, with BOS and EOS.
        per_object: tokens of each object, separator included.
        windows: 77-token windows the ``long`` policy uses.
        would_drop: objects the ``drop_smallest`` policy would leave out.
    """

    prompt: str
    tokens: int
    per_object: np.ndarray
    windows: int
    would_drop: int


class LayoutTokenizer:
    """Turns layouts into token ids for the text encoder.

    Tokenization is of the whole prompt string, as a plain diffusers pipeline would tokenize
    it, so training and inference see the same ids; object boundaries come from character
    offsets. Windows break only between objects, so no object is split across two windows.

    Args:
        tokenizer: a CLIP tokenizer; the layout tokens of ``builder.grid`` are added if missing.
        builder: prompt builder (grid, template, class names).
        policy: what to do with a prompt longer than one window (see ``LongPromptPolicy``).
        max_windows: with ``long``, the most windows a prompt may take (None: no limit).
    """

    def __init__(
        self,
        tokenizer: CLIPTokenizer,
        builder: PromptBuilder,
        policy: LongPromptPolicy = "long",
        max_windows: int | None = None,
    ) -> None:
        if policy not in ("long", "drop_smallest", "error"):
            raise ValueError(f"policy must be one of 'long', 'drop_smallest', 'error', got {policy!r}")
        if max_windows is not None and max_windows < 1:
            raise ValueError(f"max_windows must be >= 1 or None, got {max_windows}")
        add_layout_tokens(tokenizer, builder.grid)
        # Long prompts are split into windows here, so transformers' over-length warning is noise.
        tokenizer.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True
        self.tokenizer = tokenizer
        self.builder = builder
        self.policy = policy
        self.max_windows = max_windows
        self.window = tokenizer.model_max_length
        if self.window > 1024:
            raise ValueError(f"tokenizer.model_max_length looks unset ({self.window}); CLIP uses 77")
        self.capacity = self.window - 2  # BOS and EOS
        self.empty_window = self._windows([[]])[0]

    def _tokenize(
        self, prompt: str, starts: list[int], ends: list[int]
    ) -> tuple[list[int], np.ndarray, np.ndarray]:
        """Ids, owning object (-1: none) and group (object whose span the token falls after) per token."""
        # The Rust tokenizer directly: the same ids as tokenizer(prompt), without the wrapper's
        # per-call overhead, which costs as much as the tokenization itself.
        backend = self.tokenizer.backend_tokenizer
        # A call like tokenizer(text, padding="max_length", truncation=True) (StableDiffusionPipeline
        # sharing this tokenizer does one) leaves padding and truncation set on the backend: they
        # would pad or cut the prompt here.
        if backend.padding is not None:
            backend.no_padding()
        if backend.truncation is not None:
            backend.no_truncation()
        enc = backend.encode(prompt, add_special_tokens=False)
        token_starts = np.asarray([s for s, _ in enc.offsets], dtype=np.int64)
        # A token belongs to the group of the last object starting at or before it, so a
        # separator merged into a token like "),", and the suffix, go with the object before.
        group = np.searchsorted(np.asarray(starts, dtype=np.int64), token_starts, side="right") - 1
        owner = np.full_like(group, -1)
        if ends:
            inside = (group >= 0) & (token_starts < np.asarray(ends)[np.maximum(group, 0)])
            owner[inside] = group[inside]
        return enc.ids, owner, group

    def _render(self, layout: Layout) -> tuple[str, list[int], list[int]]:
        t = self.builder.template
        parts = self.builder.object_strings(layout)
        starts, ends, pos = [], [], len(t.prefix)
        for part in parts:
            starts.append(pos)
            ends.append(pos + len(part))
            pos += len(part) + len(t.separator)
        return t.prefix + t.separator.join(parts) + t.suffix, starts, ends

    def encode(self, layout: Layout) -> EncodedLayout:
        """Token ids of ``layout``'s prompt, objects in layout order."""
        prompt, starts, ends = self._render(layout)
        ids, owner, group = self._tokenize(prompt, starts, ends)
        kept = tuple(range(len(layout)))
        dropped = 0
        if len(ids) > self.capacity:
            where = f"layout of image {layout.image_id}" if layout.image_id is not None else "layout"
            if self.policy == "error":
                raise ValueError(
                    f"{where}: prompt takes {len(ids)} tokens, more than the {self.capacity} of one window "
                    f"({len(layout)} objects); use policy 'long' or 'drop_smallest'"
                )
            if self.policy == "drop_smallest":
                kept = self._largest_that_fit(layout, group)
                dropped = len(layout) - len(kept)
                layout = layout.with_objects([layout.objects[i] for i in kept])
                prompt, starts, ends = self._render(layout)
                ids, owner, group = self._tokenize(prompt, starts, ends)
                if len(ids) > self.capacity:  # token merges across the new boundaries; never truncate
                    raise ValueError(f"{where}: {len(ids)} tokens after dropping {dropped} objects")
        chunks = self._pack(ids, group, layout)
        windows = self._windows([ids[a:b] for a, b in chunks])
        index = np.full(windows.shape, -1, dtype=np.int64)
        for w, (a, b) in enumerate(chunks):
            index[w, 1 : 1 + b - a] = owner[a:b]
        return EncodedLayout(prompt, windows.reshape(-1), index.reshape(-1), len(chunks), kept, dropped)

    def budget(self, layout: Layout) -> TokenBudget:
        """How many tokens ``layout``'s prompt takes, per object and in all, before any policy."""
        prompt, starts, ends = self._render(layout)
        ids, _, group = self._tokenize(prompt, starts, ends)
        over = len(ids) > self.capacity
        return TokenBudget(
            prompt=prompt,
            tokens=len(ids) + 2,
            per_object=np.bincount(group[group >= 0], minlength=len(layout)),
            windows=len(self._pack(ids, group, layout)) if over else 1,
            would_drop=len(layout) - len(self._largest_that_fit(layout, group)) if over else 0,
        )

    def encode_text(self, text: str) -> np.ndarray:
        """Ids of a free-text prompt (e.g. ``""``), one window; longer text is refused."""
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if len(ids) > self.capacity:
            raise ValueError(
                f"text prompt takes {len(ids)} tokens, more than {self.capacity}: {text[:80]!r}…"
            )
        return self._windows([ids])[0]

    def _largest_that_fit(self, layout: Layout, group: np.ndarray) -> tuple[int, ...]:
        """Indices, in layout order, of the objects left when the smallest are dropped until the rest fit."""
        cost = np.bincount(group[group >= 0], minlength=len(layout))
        budget = self.capacity - int((group < 0).sum())
        by_size = sorted(range(len(layout)), key=lambda i: -layout.objects[i].area)
        used = np.cumsum(cost[by_size])
        return tuple(sorted(by_size[: int(np.searchsorted(used, budget, side="right"))]))

    def _pack(self, ids: list[int], group: np.ndarray, layout: Layout) -> list[tuple[int, int]]:
        """Token ranges of the windows, breaking only where an object's tokens begin."""
        if len(ids) <= self.capacity:
            return [(0, len(ids))]
        # The prefix stays with the first object.
        group = np.maximum(group, 0)
        breaks = [int(i) for i in np.flatnonzero(np.diff(group) != 0) + 1] + [len(ids)]
        chunks, start, last = [], 0, 0
        for b in breaks:
            if b - start > self.capacity:
                if last == start:
                    raise ValueError(
                        f"an object of the layout of image {layout.image_id} alone takes {b - start} tokens, "
                        f"more than a window's {self.capacity}"
                    )
                chunks.append((start, last))
                start = last
            last = b
        chunks.append((start, last))
        if self.max_windows is not None and len(chunks) > self.max_windows:
            raise ValueError(
                f"layout of image {layout.image_id} needs {len(chunks)} windows ({len(ids)} tokens, "
                f"{len(layout)} objects), more than max_windows={self.max_windows}"
            )
        return chunks

    def _windows(self, chunks: list[list[int]]) -> np.ndarray:
        """``(len(chunks), window)`` ids: BOS, chunk, EOS, then padding."""
        tok = self.tokenizer
        out = np.full((len(chunks), self.window), tok.pad_token_id, dtype=np.int64)
        for w, chunk in enumerate(chunks):
            out[w, 0] = tok.bos_token_id
            out[w, 1 : 1 + len(chunk)] = chunk
            out[w, 1 + len(chunk)] = tok.eos_token_id
        return out

    def decode_windows(self, input_ids: np.ndarray) -> list[str]:
        """The text of each window of ``input_ids`` (special tokens removed), for inspection."""
        windows = np.asarray(input_ids).reshape(-1, self.window)
        return [self.tokenizer.decode(w, skip_special_tokens=True) for w in windows]


@runtime_checkable
class OwnsLayoutTokenizer(Protocol):
    """A model that owns the prompt vocabulary its text encoder was extended for."""

    layout_tokenizer: LayoutTokenizer
