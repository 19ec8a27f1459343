"""precision=: reduced-precision compute, kept apart in the cache, close to float32."""

from __future__ import annotations

import json

import numpy as np
import pytest

from featx import Extractor
from featx.backbones import KerasBackbone, resolve_backbone
from featx.cli import main

IMAGES = np.random.default_rng(0).integers(0, 255, (6, 48, 48, 3), dtype=np.uint8)
# What identity() held before precision= existed: float32 fingerprints must not change.
FLOAT32_IDENTITY_KEYS = {
    "architecture",
    "weights",
    "input_size",
    "pooling",
    "layer",
    "preprocess",
    "dtype",
}


def _extractor(precision: str, cache_dir=None) -> Extractor:
    return Extractor(
        "MobileNetV2",
        weights=None,
        input_size=32,
        cache_dir=cache_dir,
        precision=precision,
        verbose=False,
    )


def test_unknown_precision_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"precision='fp16'.*'float32', 'bfloat16', 'float16'"):
        Extractor("MobileNetV2", weights=None, precision="fp16")


def test_precision_on_a_custom_model_says_how_to_get_it():
    import keras

    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs))
    with pytest.raises(ValueError, match="set_dtype_policy\\('mixed_bfloat16'\\)"):
        KerasBackbone(model, precision="bfloat16")


def test_precision_with_a_ready_made_backbone_is_refused(counting_backbone):
    with pytest.raises(ValueError, match="keeps its own precision"):
        resolve_backbone(counting_backbone, precision="bfloat16")


def test_precision_is_in_the_fingerprint_and_float32_keys_are_unchanged():
    f32, b16 = _extractor("float32"), _extractor("bfloat16")
    assert set(f32.spec["backbone"]) == FLOAT32_IDENTITY_KEYS
    assert b16.spec["backbone"]["precision"] == "bfloat16"
    assert f32.fingerprint != b16.fingerprint != _extractor("float16").fingerprint


def test_bfloat16_vectors_never_come_from_the_float32_cache(tmp_path):
    cache = tmp_path / "cache"
    assert _extractor("float32", cache).extract(IMAGES).cache_misses == len(IMAGES)
    b16 = _extractor("bfloat16", cache).extract(IMAGES)
    assert (b16.cache_hits, b16.cache_misses) == (0, len(IMAGES))
    assert _extractor("bfloat16", cache).extract(IMAGES).cache_hits == len(IMAGES)


def test_bfloat16_embeddings_are_close_to_float32():
    f32 = _extractor("float32").extract(IMAGES).X
    b16 = _extractor("bfloat16").extract(IMAGES).X
    assert b16.dtype == np.float32
    assert not np.array_equal(f32, b16)  # really computed in another precision
    cosine = np.sum(f32 * b16, 1) / (np.linalg.norm(f32, axis=1) * np.linalg.norm(b16, axis=1))
    assert cosine.min() > 0.99


def test_float16_on_a_machine_without_gpu_warns():
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU: float16 is its intended use")
    with pytest.warns(UserWarning, match="meant for GPUs"):
        X = _extractor("float16").extract(IMAGES[:2]).X
    assert X.dtype == np.float32 and np.isfinite(X).all()


def test_building_in_reduced_precision_leaves_the_global_policy_alone():
    import keras

    before = keras.config.dtype_policy().name
    _extractor("bfloat16").backbone.model  # noqa: B018  (building is the point)
    assert keras.config.dtype_policy().name == before


def test_cli_extract_passes_precision_through(image_folder, capsys):
    argv = ["extract", str(image_folder), "--backbone", "MobileNetV2", "--weights", "none"]
    argv += ["--size", "32", "--cache-dir", "none", "--quiet", "--json"]
    assert main([*argv, "--precision", "bfloat16"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["fingerprint"] == _extractor("bfloat16").fingerprint


def test_transformer_refuses_a_precision_changed_after_fit():
    from featx import EmbeddingTransformer

    transformer = EmbeddingTransformer(weights=None, input_size=32, cache_dir=None)
    transformer.fit(IMAGES)
    assert transformer.get_params()["precision"] == "float32"
    transformer.set_params(precision="bfloat16")
    with pytest.raises(ValueError, match=r"\(precision\)"):
        transformer.transform(IMAGES)
