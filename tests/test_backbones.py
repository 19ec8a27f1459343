"""The backbone registry, custom models, weights, layers, pooling and preprocessing."""

from __future__ import annotations

import inspect
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

from featx.backbones import KerasBackbone, get_spec, list_backbones, resolve_backbone

# Models taking over ~8 s to build on a 2-core machine; CI still runs them.
HEAVY = {
    "NASNetLarge",
    "NASNetMobile",
    "ResNet101",
    "ResNet152",
    "ResNet101V2",
    "ResNet152V2",
    "EfficientNetV2L",
    "EfficientNetV2M",
    "InceptionResNetV2",
}


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    yield
    keras.backend.clear_session()


def _batch(size, n=2, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, *size, 3)).astype(np.float32)


def test_registry_covers_every_installed_keras_application():
    installed = {
        name
        for name, obj in vars(keras.applications).items()
        if inspect.isfunction(obj) and name[0].isupper()
    }
    assert installed == {s.name for s in list_backbones()}


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(s, id=s.name, marks=[pytest.mark.slow] if s.name in HEAVY else [])
        for s in list_backbones()
    ],
)
def test_every_registry_backbone_builds_with_its_dimension(spec):
    backbone = KerasBackbone(spec.name, weights=None, input_size=max(32, spec.min_size))
    out = backbone.embed(_batch(backbone.input_size))
    assert out.shape == (2, spec.dim)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert backbone.model.trainable is False


def test_unknown_name_lists_close_matches():
    with pytest.raises(
        ValueError, match=r"Unknown backbone 'MobilenetV2'.*Did you mean 'MobileNetV2'"
    ):
        get_spec("MobilenetV2")


def test_unknown_name_lists_every_known_name():
    with pytest.raises(ValueError, match=r"ConvNeXtBase.*Xception"):
        get_spec("NoSuchNet")


def test_input_below_the_minimum_is_refused():
    with pytest.raises(ValueError, match="too small for InceptionV3: it needs at least 75x75"):
        KerasBackbone("InceptionV3", weights=None, input_size=64)


def test_registry_refuses_foreign_preprocessing():
    with pytest.raises(ValueError, match="always use their own family's preprocess_input"):
        KerasBackbone("ResNet50", weights=None, input_size=32, preprocess=lambda x: x / 255.0)


@pytest.mark.parametrize("name", ["ResNet50", "MobileNetV2", "DenseNet121"])
def test_embedding_uses_the_familys_own_preprocessing(name):
    """caffe (ResNet50), tf (MobileNetV2) and torch (DenseNet) modes: the embedding equals
    the family's preprocess_input + model(training=False) + global average pooling."""
    backbone = KerasBackbone(name, weights=None, input_size=32)
    batch = _batch(backbone.input_size)
    module = getattr(keras.applications, get_spec(name).module)
    features = backbone.model(module.preprocess_input(batch.copy()), training=False)
    expected = np.asarray(features).mean(axis=(1, 2))
    np.testing.assert_allclose(backbone.embed(batch), expected, rtol=1e-4, atol=1e-6)


def test_max_pooling_differs_from_average():
    # 96 px leaves a 3x3 final map (at 32 px it is 1x1 and both poolings agree).
    avg = KerasBackbone("VGG16", weights=None, input_size=96, pooling="avg")
    mx = KerasBackbone("VGG16", weights=None, input_size=96, pooling="max")
    batch = _batch((96, 96))
    assert (mx.embed(batch) >= avg.embed(batch) - 1e-6).all()
    assert not np.allclose(mx.embed(batch), avg.embed(batch))


def test_unknown_pooling_is_refused():
    with pytest.raises(ValueError, match="pooling='sum' is not supported"):
        KerasBackbone("VGG16", weights=None, pooling="sum")


def test_layer_takes_an_intermediate_output():
    backbone = KerasBackbone("MobileNetV2", weights=None, input_size=64, layer="block_6_expand")
    assert backbone.dim == 192
    assert backbone.embed(_batch((64, 64))).shape == (2, 192)
    assert backbone.identity()["layer"] == "block_6_expand"


def test_unknown_layer_suggests_close_names():
    backbone = KerasBackbone("MobileNetV2", weights=None, input_size=32, layer="block_6_expnd")
    with pytest.raises(ValueError, match="Did you mean 'block_6_expand'"):
        _ = backbone.dim


def test_seeded_random_weights_are_reproducible_and_seed_matters():
    # VGG16: its random-init features are well scaled; the MobileNets' are ~1e-12 or less.
    batch = _batch((32, 32))
    a = KerasBackbone("VGG16", weights=None, input_size=32, seed=1).embed(batch)
    b = KerasBackbone("VGG16", weights=None, input_size=32, seed=1).embed(batch)
    c = KerasBackbone("VGG16", weights=None, input_size=32, seed=2).embed(batch)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.1 * np.abs(a).max()


def test_seeded_random_weights_match_across_processes(tmp_path):
    batch = _batch((32, 32))
    np.save(tmp_path / "batch.npy", batch)
    code = (
        "import sys, numpy as np\n"
        "from featx.backbones import KerasBackbone\n"
        "b = KerasBackbone('VGG16', weights=None, input_size=32, seed=3)\n"
        f"np.save(sys.argv[1], b.embed(np.load({str(tmp_path / 'batch.npy')!r})))\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "out.npy")], check=True)
    here = KerasBackbone("VGG16", weights=None, input_size=32, seed=3).embed(batch)
    assert np.abs(here).max() > 1e-3  # a real signal, not a degenerate all-zero output
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), here)


def test_building_a_random_baseline_leaves_global_rngs_alone():
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    KerasBackbone("MobileNet", weights=None, input_size=32).model  # noqa: B018
    assert np.random.random() == expected


def test_weights_file_is_fingerprinted_by_content(tmp_path):
    seeded = KerasBackbone("MobileNet", weights=None, input_size=32, seed=5)
    path = tmp_path / "w.weights.h5"
    seeded.model.save_weights(path)
    loaded = KerasBackbone("MobileNet", weights=path, input_size=32)
    batch = _batch((32, 32))
    np.testing.assert_array_equal(loaded.embed(batch), seeded.embed(batch))

    copy = tmp_path / "elsewhere.weights.h5"
    shutil.copy(path, copy)
    assert KerasBackbone("MobileNet", weights=copy, input_size=32).identity() == loaded.identity()

    KerasBackbone("MobileNet", weights=None, input_size=32, seed=6).model.save_weights(path)
    assert KerasBackbone("MobileNet", weights=path, input_size=32).identity() != loaded.identity()


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"weights=.*is not an existing file"):
        KerasBackbone("MobileNet", weights=tmp_path / "nope.h5", input_size=32)


def _small_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((24, 24, 3))
    x = keras.layers.Conv2D(8, 3, name="conv_a", activation="relu")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Conv2D(16, 3, name="conv_b")(x)
    return keras.Model(inputs, x, name="tiny")


def test_custom_keras_model_is_frozen_and_sized_from_its_input():
    model = _small_model()
    backbone = resolve_backbone(model)
    assert backbone.input_size == (24, 24)
    assert backbone.dim == 16
    assert model.trainable is False
    out = backbone.embed(_batch((24, 24)))
    expected = np.asarray(model(_batch((24, 24)), training=False)).mean(axis=(1, 2))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_custom_model_preprocess_and_layer():
    backbone = resolve_backbone(_small_model(), layer="conv_a", preprocess=lambda x: x / 255.0)
    assert backbone.dim == 8
    assert backbone.identity()["preprocess"] != "identity"
    assert backbone.embed(_batch((24, 24))).shape == (2, 8)


def test_custom_model_fingerprint_follows_its_weights():
    a, b = _small_model(seed=0), _small_model(seed=1)
    assert resolve_backbone(a).identity()["weights"] != resolve_backbone(b).identity()["weights"]
    assert resolve_backbone(a).identity() == resolve_backbone(_small_model(seed=0)).identity()


def test_custom_model_refuses_random_weights():
    with pytest.raises(ValueError, match="registry backbones only"):
        resolve_backbone(_small_model(), weights=None)


def test_saved_model_file_is_a_backbone(tmp_path):
    model = _small_model()
    path = tmp_path / "tiny.keras"
    model.save(path)
    from_file = resolve_backbone(str(path))
    batch = _batch((24, 24))
    np.testing.assert_allclose(
        from_file.embed(batch), resolve_backbone(model).embed(batch), rtol=1e-6
    )
    assert from_file.identity()["architecture"].startswith("saved:sha256=")


def test_something_else_is_refused():
    with pytest.raises(TypeError, match="is not understood"):
        resolve_backbone(42)


def test_unavailable_imagenet_weights_say_what_to_do(monkeypatch):
    from keras.src.utils import file_utils

    from featx.backbones import WeightsUnavailableError

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: Name or service not known")

    monkeypatch.setattr(file_utils, "get_file", offline)
    backbone = KerasBackbone("MobileNetV2", weights="imagenet", input_size=96)
    with pytest.raises(WeightsUnavailableError, match="pass weights= the path of a local"):
        _ = backbone.model


def test_custom_model_loads_a_weights_file(tmp_path):
    trained = _small_model(seed=4)
    path = tmp_path / "tiny.weights.h5"
    trained.save_weights(path)
    backbone = resolve_backbone(_small_model(seed=9), weights=path)
    batch = _batch((24, 24))
    np.testing.assert_allclose(
        backbone.embed(batch), resolve_backbone(trained).embed(batch), rtol=1e-6
    )
