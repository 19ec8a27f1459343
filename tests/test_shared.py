"""Integration on the real data: the shared MobileNetV2 weights on a slice of clothing10."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import CLOTHING10, MOBILENET_WEIGHTS, require_shared

from featx import Extractor

pytestmark = pytest.mark.shared
CLASSES = ["hat", "pants", "shoes"]


@pytest.fixture(scope="module")
def clothing_slice() -> tuple[list[str], list[str]]:
    require_shared()
    paths, labels = [], []
    for name in CLASSES:
        found = sorted((CLOTHING10 / "train" / name).glob("*.jpg"))[:12]
        paths += [str(p) for p in found]
        labels += [name] * len(found)
    return paths, labels


def _leave_one_out_1nn(X: np.ndarray, y: np.ndarray) -> float:
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return float((y[similarity.argmax(1)] == y).mean())


def _extractor(weights, cache_dir=None) -> Extractor:
    return Extractor(
        "MobileNetV2", weights=weights, input_size=160, cache_dir=cache_dir, verbose=False
    )


def test_pretrained_weights_separate_classes_and_random_ones_do_not(clothing_slice, tmp_path):
    paths, labels = clothing_slice
    pretrained = _extractor(MOBILENET_WEIGHTS, tmp_path / "c").extract(paths, labels=labels)
    assert pretrained.X.shape == (36, 1280)
    assert pretrained.classes == CLASSES
    random = _extractor(None).extract(paths, labels=labels)
    # Measured: 0.94 with the shared weights, 0.50 with random ones (chance is 0.33).
    assert _leave_one_out_1nn(pretrained.X, pretrained.y) >= 0.85
    assert _leave_one_out_1nn(random.X, random.y) <= 0.75

    again = _extractor(MOBILENET_WEIGHTS, tmp_path / "c").extract(paths, labels=labels)
    assert again.cache_misses == 0
    np.testing.assert_array_equal(again.X, pretrained.X)


def test_matches_the_plain_keras_pipeline(clothing_slice):
    """featx's embeddings agree with the tutorial pipeline (load_img, preprocess_input,
    model) up to the small decoding differences (JPEG draft scaling)."""
    paths, _ = clothing_slice
    extractor = _extractor(MOBILENET_WEIGHTS)
    ours = extractor.extract(paths).X
    images = np.stack(
        [
            keras.utils.img_to_array(
                keras.utils.load_img(p, target_size=(160, 160), interpolation="bilinear")
            )
            for p in paths
        ]
    )
    features = extractor.backbone.model(
        keras.applications.mobilenet_v2.preprocess_input(images), training=False
    )
    reference = np.asarray(features).mean(axis=(1, 2))
    cosine = (ours * reference).sum(1) / (
        np.linalg.norm(ours, axis=1) * np.linalg.norm(reference, axis=1)
    )
    # Measured: mean 0.997, min 0.989.
    assert cosine.mean() >= 0.99
    assert cosine.min() >= 0.97
