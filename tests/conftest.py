"""Shared fixtures: tiny seeded images on disk, a counting fake backbone, the shared data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from featx.backbones import Backbone

ROOT = Path(__file__).resolve().parents[1]
# What `featx extract --json` (Embeddings.summary) promises, as the core issue lists it.
SUMMARY_FIELDS = (
    "n_images",
    "dim",
    "seconds",
    "images_per_second",
    "cache_hits",
    "cache_misses",
    "failed",
)
SHARED = Path(os.environ.get("FEATX_SHARED", ROOT.parent / "shared"))
MOBILENET_WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_160_no_top.weights.h5"
CLOTHING10 = SHARED / "datasets" / "clothing10"


def random_image(seed: int, size: tuple[int, int] = (48, 40), mode: str = "RGB") -> Image.Image:
    """A seeded image with structure (a gradient plus noise), so every seed differs."""
    rng = np.random.default_rng(seed)
    w, h = size
    gradient = np.linspace(0, 255, w)[None, :, None] * rng.random(3)[None, None, :]
    noise = rng.integers(0, 80, (h, w, 3))
    pixels = np.clip(gradient + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A class-per-folder tree: 3 classes (cat, dog, fish) x 4 JPEG/PNG images each."""
    root = tmp_path / "images"
    for c, name in enumerate(["cat", "dog", "fish"]):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(4):
            img = random_image(10 * c + i)
            img.save(folder / f"{i:02d}.{'jpg' if i % 2 == 0 else 'png'}")
    return root


class CountingBackbone(Backbone):
    """A fake network that records every real image it embeds (padding rows are all zero).

    Its embedding is a few cheap image statistics, so it is deterministic and differs
    between images. ``seen`` lists the per-image means of every non-padding row computed.
    """

    name = "counting"

    def __init__(self, input_size: int = 16, tag: str = "v1") -> None:
        self.input_size = (input_size, input_size)
        self.dim = 6
        self.tag = tag
        self.seen: list[float] = []

    def identity(self) -> dict:
        return {
            "architecture": "counting",
            "weights": self.tag,
            "input_size": list(self.input_size),
        }

    def embed(self, batch: np.ndarray) -> np.ndarray:
        flat = batch.reshape(len(batch), -1, 3)
        out = np.concatenate([flat.mean(1), flat.std(1)], axis=1).astype(np.float32)
        self.seen.extend(float(m) for m, row in zip(out[:, 0], flat, strict=True) if row.any())
        return out


@pytest.fixture
def counting_backbone() -> CountingBackbone:
    return CountingBackbone()


def require_shared() -> None:
    """Skip a test of the shared weights and photos where they are absent; under CI
    (``CI`` set, as ``.ci/run`` runs beside ``../shared``) their absence fails it."""
    if not MOBILENET_WEIGHTS.is_file() or not CLOTHING10.is_dir():
        message = f"the shared weights and data are not at {SHARED} (set FEATX_SHARED)"
        if os.environ.get("CI"):
            pytest.fail(f"CI runs beside ../shared, but {message}")
        pytest.skip(message)
