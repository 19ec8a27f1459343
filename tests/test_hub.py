"""keras-hub presets as backbones: tiny ViT (DINOv2) and CNN (ResNet) presets built offline.

The presets are written to a temporary folder as keras-hub itself writes them
(``save_to_preset``: config.json, image_converter.json, model.weights.h5), at sizes that
build in a second. Nothing here touches the network: the offline tests point keras-hub's
Kaggle client at a closed local port.
"""

from __future__ import annotations

import json
import pickle
import shutil
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

from featx import Extractor, compare  # noqa: E402
from featx.backbones import (  # noqa: E402
    HubBackbone,
    WeightsUnavailableError,
    resolve_backbone,
)
from featx.cli import main  # noqa: E402
from featx.hub import (  # noqa: E402
    FAMILIES,
    KNOWN_ARCHITECTURES,
    PresetUnavailableError,
    resolve_preset,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
VIT_DIM, VIT_REGISTERS = 24, 1


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    yield
    keras.backend.clear_session()


@pytest.fixture(autouse=True)
def _offline(tmp_path, monkeypatch):
    """An empty kagglehub cache, and Kaggle's client aimed at a closed local port."""
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "TEST")  # http://localhost:7777
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _vit(patch_size: int = 8, layers: int = 2, size: int = 32):
    return keras_hub.models.DINOV2Backbone(
        patch_size=patch_size, num_layers=layers, hidden_dim=VIT_DIM, num_heads=2,
        intermediate_dim=48, num_register_tokens=VIT_REGISTERS, image_shape=(size, size, 3),
        position_embedding_shape=(size, size),
    )  # fmt: skip


def _cnn():
    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 64],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block",
        use_pre_activation=False, image_shape=(None, None, 3),
    )  # fmt: skip


def _save(folder: Path, backbone, converter) -> Path:
    keras.utils.set_random_seed(1)
    backbone.save_to_preset(str(folder))
    converter.save_to_preset(str(folder))
    return folder


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    """A DINOv2-architecture ViT and a ResNet, each with its converter and weights."""
    root = tmp_path_factory.mktemp("presets")
    keras.utils.set_random_seed(1)
    vit = _save(
        root / "vit",
        _vit(),
        keras_hub.layers.DINOV2ImageConverter(
            image_size=(32, 32), scale=[1 / 255 / s for s in STD],
            offset=[-m / s for m, s in zip(MEAN, STD, strict=True)], interpolation="bicubic",
        ),
    )  # fmt: skip
    cnn = _save(
        root / "cnn",
        _cnn(),
        keras_hub.layers.ResNetImageConverter(
            image_size=(40, 40), scale=1 / 255, crop_to_aspect_ratio=False
        ),
    )
    keras.backend.clear_session()
    return {"vit": f"hub:{vit}", "cnn": f"hub:{cnn}", "root": root}


def _pixels(n: int = 6, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _copy(presets, name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    shutil.copytree(presets[name].removeprefix("hub:"), target)
    return target


# -- building and embedding ----------------------------------------------------------------


def test_a_vit_preset_embeds_its_class_token_with_its_converter(presets, image_folder):
    ex = Extractor(presets["vit"], cache_dir=None, batch_size=4, verbose=False)
    emb = ex.extract(image_folder)
    assert ex.backbone.pooling == "cls"
    assert ex.input_size == (32, 32)  # the converter's image size
    assert ex.resize == "center_crop"  # its converter keeps the aspect ratio
    assert ex.spec["images"]["resize"] == "center_crop"
    assert emb.X.shape == (12, VIT_DIM)
    assert np.isfinite(emb.X).all()
    assert ex.backbone.model.trainable is False


def test_a_cnn_preset_keeps_avg_pooling_and_its_stretching_converter(presets, image_folder):
    ex = Extractor(presets["cnn"], input_size=32, cache_dir=None, verbose=False)
    emb = ex.extract(image_folder)
    assert (ex.backbone.pooling, ex.resize) == ("avg", "stretch")
    assert emb.X.shape == (12, 64)


def test_vectors_equal_keras_hubs_own_pipeline(presets):
    """featx's vectors are what keras-hub computes from the same pixels: the preset's
    converter, its backbone with the preset's weights, then the pooling."""
    pixels = _pixels()
    directory = presets["vit"].removeprefix("hub:")
    network = keras_hub.models.Backbone.from_preset(directory)
    converter = keras_hub.layers.ImageConverter.from_preset(directory)
    tokens = np.asarray(network({"images": converter(pixels.astype(np.float32))}))
    patches = tokens[:, 1 + VIT_REGISTERS :].mean(axis=1)
    for pooling, expected in [
        ("cls", tokens[:, 0]),
        ("mean", patches),
        ("cls+mean", np.concatenate([tokens[:, 0], patches], axis=1)),
    ]:
        ex = Extractor(presets["vit"], pooling=pooling, cache_dir=None, verbose=False)
        np.testing.assert_allclose(ex.extract(pixels).X, expected, rtol=1e-4, atol=1e-4)

    directory = presets["cnn"].removeprefix("hub:")
    network = keras_hub.models.Backbone.from_preset(directory)
    converter = keras_hub.layers.ImageConverter.from_preset(directory, image_size=(32, 32))
    fmap = np.asarray(network(converter(pixels.astype(np.float32))))
    ex = Extractor(presets["cnn"], input_size=32, pooling="avg+max", cache_dir=None, verbose=False)
    expected = np.concatenate([fmap.mean(axis=(1, 2)), fmap.max(axis=(1, 2))], axis=1)
    np.testing.assert_allclose(ex.extract(pixels).X, expected, rtol=1e-4, atol=1e-4)


def test_random_weights_are_seeded_and_are_not_the_presets(presets):
    pixels = _pixels().astype(np.float32)

    def embed(**kwargs):
        return resolve_backbone(presets["vit"], **kwargs).embed(pixels)

    a, b, c = embed(weights=None, seed=3), embed(weights=None, seed=3), embed(weights=None, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert not np.allclose(a, embed())  # the preset's own weights


def test_weights_file_loads_into_the_presets_architecture(presets, tmp_path):
    source = resolve_backbone(presets["vit"], weights=None, seed=5)
    path = tmp_path / "tuned.weights.h5"
    keras_hub.models.Backbone.from_preset(presets["vit"].removeprefix("hub:")).save_weights(path)
    loaded = resolve_backbone(presets["vit"], weights=path)
    pixels = _pixels().astype(np.float32)
    np.testing.assert_array_equal(
        loaded.embed(pixels), resolve_backbone(presets["vit"]).embed(pixels)
    )
    assert loaded.identity()["weights"].startswith("file:sha256=")
    assert not np.allclose(loaded.embed(pixels), source.embed(pixels))


def test_tiny_inputs_interpolate_a_dinov2s_position_embeddings(presets):
    backbone = resolve_backbone(presets["vit"], input_size=24)
    assert backbone.embed(_pixels(size=24).astype(np.float32)).shape == (6, VIT_DIM)


def test_the_network_pickles_without_its_weights_and_rebuilds_the_same(presets):
    backbone = resolve_backbone(presets["vit"])
    pixels = _pixels().astype(np.float32)
    before = backbone.embed(pixels)
    shipped = pickle.dumps(backbone)
    assert len(shipped) < 100_000  # names and configs, not the network
    np.testing.assert_array_equal(pickle.loads(shipped).embed(pixels), before)


# -- every family of the table -----------------------------------------------------------------


def _towers(kind: str):
    vision = getattr(keras_hub.models, f"{kind}VisionEncoder")(
        patch_size=8, hidden_dim=16, num_layers=1, num_heads=2, intermediate_dim=32,
        image_shape=(32, 32, 3),
    )  # fmt: skip
    text = getattr(keras_hub.models, f"{kind}TextEncoder")(
        vocabulary_size=10, embedding_dim=16, hidden_dim=16, num_layers=1, num_heads=2,
        intermediate_dim=32, max_sequence_length=8,
    )  # fmt: skip
    extra = {} if kind == "SigLIP" else {"projection_dim": 12}
    return getattr(keras_hub.models, f"{kind}Backbone")(vision, text, **extra)


TOKENS = {"patch_size": 8, "num_layers": 1, "num_heads": 2, "image_shape": (32, 32, 3)}


def _build(class_name: str, **kwargs):
    return lambda: getattr(keras_hub.models, class_name)(**kwargs)


# One tiny network per class of featx.hub.FAMILIES, and its number of prefix tokens.
# fmt: off
FACTORIES = {
    "DINOV2Backbone": (_vit, 1 + VIT_REGISTERS),
    "DINOV3Backbone": (_build("DINOV3Backbone", hidden_dim=16, intermediate_dim=32,
                              num_register_tokens=4, **TOKENS), 5),
    "ViTBackbone": (_build("ViTBackbone", hidden_dim=16, mlp_dim=32, **TOKENS), 1),
    "DeiTBackbone": (_build("DeiTBackbone", hidden_dim=16, intermediate_dim=32, **TOKENS), 2),
    "ResNetBackbone": (_cnn, None),
    "VGGBackbone": (_build("VGGBackbone", stackwise_num_repeats=[1, 1],
                           stackwise_num_filters=[8, 16]), None),
    "DenseNetBackbone": (_build("DenseNetBackbone", stackwise_num_repeats=[1, 1],
                                growth_rate=4), None),
    "XceptionBackbone": (_build("XceptionBackbone", stackwise_conv_filters=[[8, 8], [16, 16]],
                                stackwise_pooling=[True, False]), None),
    "MobileNetBackbone": (_build(
        "MobileNetBackbone", stackwise_expansion=[[1]], stackwise_num_blocks=[1],
        stackwise_num_filters=[[8]], stackwise_kernel_size=[[3]], stackwise_num_strides=[[2]],
        stackwise_se_ratio=[[None]], stackwise_activation=[["relu"]], stackwise_padding=[[1]],
        output_num_filters=16, depthwise_filters=8, depthwise_stride=2,
        depthwise_residual=False, last_layer_filter=16), None),
    "EfficientNetBackbone": (_build(
        "EfficientNetBackbone", stackwise_width_coefficients=[1.0, 1.0],
        stackwise_depth_coefficients=[1.0, 1.0], stackwise_kernel_sizes=[3, 3],
        stackwise_num_repeats=[1, 1], stackwise_input_filters=[8, 8],
        stackwise_output_filters=[8, 16], stackwise_expansion_ratios=[1, 2],
        stackwise_squeeze_and_excite_ratios=[0.25, 0.25], stackwise_strides=[1, 2],
        stackwise_block_types=["v1", "v1"], stackwise_force_input_filters=[0, 0],
        stackwise_nores_option=[False, False]), None),
    "CSPNetBackbone": (_build(
        "CSPNetBackbone", stem_filters=32, stem_kernel_size=3, stem_strides=2,
        stackwise_depth=[1, 1], stackwise_strides=[1, 2], stackwise_num_filters=[64, 128],
        block_type="bottleneck_block", stage_type="csp", bottle_ratio=[0.5],
        block_ratio=[1.0], expand_ratio=[2.0]), None),
    "CLIPBackbone": (lambda: _towers("CLIP"), None),
    "SigLIPBackbone": (lambda: _towers("SigLIP"), None),
    "MetaCLIP2Backbone": (lambda: _towers("MetaCLIP2"), None),
}
# fmt: on


def test_every_family_of_the_table_is_tested():
    assert set(FACTORIES) == set(FAMILIES)


@pytest.mark.parametrize("class_name", sorted(FACTORIES))
def test_every_family_embeds_as_keras_hub_computes(class_name, tmp_path):
    """Each family, saved as a preset with weights, embeds with its default pooling exactly
    what its keras-hub network computes from the converted pixels; token families' "mean"
    leaves out exactly their class, distillation and register tokens."""
    factory, prefix = FACTORIES[class_name]
    keras.utils.set_random_seed(2)
    converter = keras_hub.layers.ImageConverter(image_size=(32, 32), scale=1 / 127.5, offset=-1)
    folder = _save(tmp_path / class_name, factory(), converter)
    pixels = _pixels(n=3)
    network = keras_hub.models.Backbone.from_preset(str(folder))
    x = converter(pixels.astype(np.float32))
    family = FAMILIES[class_name]
    if family.tower:
        expected = {"head": np.asarray(network.get_vision_embeddings(x))}
    else:
        named = isinstance(network.input, dict)  # {"images": ...}, DINOv3 {"pixel_values": ...}
        out = np.asarray(network({next(iter(network.input)): x} if named else x))
        if family.output == "tokens":
            expected = {"cls": out[:, 0], "mean": out[:, prefix:].mean(axis=1)}
        else:
            expected = {"avg": out.mean(axis=(1, 2)), "max": out.max(axis=(1, 2))}
    for pooling, vectors in expected.items():
        backbone = resolve_backbone(f"hub:{folder}", pooling=pooling)
        assert backbone.dim == vectors.shape[1]
        embedded = backbone.embed(pixels.astype(np.float32))
        np.testing.assert_allclose(embedded, vectors, rtol=1e-4, atol=1e-4)
    assert resolve_backbone(f"hub:{folder}").pooling == next(iter(expected))


# -- pooling and layers ---------------------------------------------------------------------


def test_token_poolings_and_their_dimensions(presets):
    dims = {p: resolve_backbone(presets["vit"], pooling=p).dim for p in ("cls", "mean", "cls+mean")}
    assert dims == {"cls": VIT_DIM, "mean": VIT_DIM, "cls+mean": 2 * VIT_DIM}


@pytest.mark.parametrize(
    ("preset", "pooling", "listed"),
    [
        ("vit", "avg", r"\('cls', 'mean', 'cls\+mean'\)"),
        ("vit", "max", r"DINOV2Backbone\) outputs a sequence of tokens"),
        ("cnn", "cls", r"\('avg', 'max', 'avg\+max'\)"),
        ("cnn", "sum", r"ResNetBackbone\) outputs a feature map"),
    ],
)
def test_a_pooling_the_output_does_not_have_lists_those_it_has(presets, preset, pooling, listed):
    with pytest.raises(ValueError, match=f"pooling='{pooling}' is not supported.*{listed}"):
        resolve_backbone(presets[preset], pooling=pooling)


def test_layer_reaches_pyramid_levels(presets):
    pixels = _pixels().astype(np.float32)
    last = resolve_backbone(presets["vit"]).embed(pixels)
    first_block = resolve_backbone(presets["vit"], layer="stage1")
    assert first_block.identity()["layer"] == "stage1"
    assert not np.allclose(first_block.embed(pixels), last)
    p2 = resolve_backbone(presets["cnn"], input_size=32, layer="P2")
    assert p2.dim == 64 and p2.embed(pixels).shape == (6, 64)


def test_an_unknown_layer_lists_the_pyramid_levels(presets):
    backbone = resolve_backbone(presets["vit"], layer="stage9")
    with pytest.raises(ValueError, match=r"'stem', 'stage1', 'stage2'.*Did you mean 'stage2'"):
        _ = backbone.dim


# -- what is refused -------------------------------------------------------------------------


def test_preprocess_is_refused_for_a_preset(presets):
    with pytest.raises(ValueError, match="always fed by its own ImageConverter"):
        Extractor(presets["vit"], preprocess=lambda x: x / 255.0, cache_dir=None)


def test_a_resize_policy_against_the_converter_is_refused(presets):
    with pytest.raises(ValueError, match=r"resize='stretch' contradicts.*'center_crop'"):
        Extractor(presets["vit"], resize="stretch", cache_dir=None)
    assert Extractor(presets["vit"], resize="center_crop", cache_dir=None).resize == "center_crop"


def test_a_missing_keras_hub_names_the_install_command(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "keras_hub", None)  # `import keras_hub` now fails
    with pytest.raises(ImportError, match=r'pip install "featx\[hub\]"'):
        resolve_backbone("hub:dinov2_small")
    assert main(["backbones", "--hub"]) == 1
    assert 'pip install "featx[hub]"' in capsys.readouterr().err


def test_an_uncached_preset_fails_fast_offline_with_what_to_do():
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match="not in the local download cache") as info:
        resolve_backbone("hub:dinov2_small")
    assert time.perf_counter() - start < 30
    message = str(info.value)
    assert "kaggle://keras/dinov2/keras/dinov2_small" in message
    assert "KAGGLEHUB_CACHE" in message and "weights=None" in message
    with pytest.raises(PresetUnavailableError, match="featx's copy of the architecture for"):
        resolve_backbone("hub:resnet_50_imagenet", weights=None)


def test_a_random_baseline_of_a_well_known_preset_builds_offline():
    backbone = resolve_backbone("hub:dinov2_small", weights=None, input_size=28)
    assert backbone._preset.source == "featx"
    assert (backbone.name, backbone.pooling, backbone.resize) == (
        "hub:dinov2_small", "cls", "center_crop",
    )  # fmt: skip
    assert backbone.dim == 384
    assert set(KNOWN_ARCHITECTURES) >= {"dinov2_small", "dinov2_base", "dinov2_large"}


def test_an_unknown_preset_suggests_close_names():
    with pytest.raises(ValueError, match=r"Did you mean 'hub:dinov2_small'"):
        resolve_backbone("hub:dinov2_smal", weights=None)


def test_a_backbone_that_embeds_no_images_is_refused(tmp_path):
    folder = tmp_path / "bert"
    folder.mkdir()
    config = {"class_name": "BertBackbone", "registered_name": "keras_hub>BertBackbone"}
    (folder / "config.json").write_text(json.dumps({**config, "config": {}}))
    with pytest.raises(ValueError, match="is a BertBackbone, which featx does not embed images"):
        resolve_backbone(f"hub:{folder}", weights=None)


def test_a_transformers_checkpoint_is_explained(tmp_path):
    folder = tmp_path / "dinov2-small"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
    with pytest.raises(ValueError, match=r"Hugging Face Transformers checkpoint.*save_to_preset"):
        resolve_backbone(f"hub:{folder}", weights=None)


def test_a_preset_without_its_converter_is_refused(presets, tmp_path):
    folder = _copy(presets, "vit", tmp_path)
    (folder / "image_converter.json").unlink()
    with pytest.raises(ValueError, match=r"ships no ImageConverter.*never guesses"):
        resolve_backbone(f"hub:{folder}")


@pytest.mark.parametrize(
    ("preset", "pooling"), [("vit", "cls+mean"), ("vit", "mean"), ("cnn", None)]
)
def test_a_preset_classifier_exports_with_its_converter_and_token_pooling(
    presets, preset, pooling, tmp_path
):
    import tensorflow as tf

    from featx import export
    from featx.classifier import fit_classifier

    size = {"vit": 32, "cnn": 40}[preset]  # each converter's image size
    images = _pixels(n=12, size=size)
    images[:6] //= 3  # dark and light: two classes a random network separates
    labels = ["dark"] * 6 + ["light"] * 6
    model = fit_classifier(
        images, labels=labels, backbone=presets[preset], pooling=pooling, cache_dir=None
    )
    want = model.predict_proba(images)
    export(model, tmp_path / "m.keras")
    meta = json.loads((tmp_path / "m.keras.json").read_text())
    assert meta["classes"] == ["dark", "light"] and meta["input_size"] == [size, size]
    # The converter crops (vit) or stretches (cnn): the metadata names the policy used.
    assert ("center_crop" if preset == "vit" else "stretch") in meta["input"]
    got = keras.models.load_model(tmp_path / "m.keras", safe_mode=True).predict(images)
    assert np.abs(got - want).max() <= 1e-4
    export(model, tmp_path / "saved", format="savedmodel")
    loaded = tf.saved_model.load(str(tmp_path / "saved"))  # kept: its variables die with it
    served = loaded.serve(tf.constant(images)).numpy()
    assert np.abs(served - want).max() <= 1e-4


# -- cache, fingerprint, resume -----------------------------------------------------------------


def _counting(backbone: HubBackbone) -> list[int]:
    """Wrap ``backbone.embed`` to count the real (non-padding) images it computes."""
    counts: list[int] = []
    embed = backbone.embed

    def counted(batch):
        counts.append(int(sum(bool(row.any()) for row in batch)))
        return embed(batch)

    backbone.embed = counted
    return counts


def test_the_cache_computes_each_image_once(presets, image_folder, tmp_path):
    first = resolve_backbone(presets["vit"])
    counts = _counting(first)
    a = Extractor(first, cache_dir=tmp_path, batch_size=4, verbose=False).extract(image_folder)
    assert sum(counts) == 12 and (a.cache_hits, a.cache_misses) == (0, 12)

    again = resolve_backbone(presets["vit"])  # a new object: the same fingerprint
    counts_again = _counting(again)
    b = Extractor(again, cache_dir=tmp_path, batch_size=4, verbose=False).extract(image_folder)
    assert counts_again == [] and (b.cache_hits, b.cache_misses) == (12, 0)
    np.testing.assert_array_equal(a.X, b.X)


def test_a_warm_run_builds_no_network(presets, image_folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = Extractor(presets["vit"], cache_dir=cache, verbose=False).extract(image_folder)

    def refuse(*args, **kwargs):
        raise AssertionError("the network was built")

    monkeypatch.setattr("featx.backbones.build_network", refuse)
    warm = Extractor(presets["vit"], cache_dir=cache, verbose=False)
    again = warm.extract(image_folder)  # the vector length comes from the cache
    assert (again.cache_hits, again.cache_misses) == (12, 0)
    np.testing.assert_array_equal(first.X, again.X)
    with pytest.raises(AssertionError, match="was built"):  # the test can tell
        warm.extract(_pixels(1, seed=9))


def test_an_interrupted_run_resumes_exactly(presets, image_folder, tmp_path):
    clean = Extractor(presets["vit"], cache_dir=None, batch_size=4, verbose=False)
    expected = clean.extract(image_folder).X

    failing = resolve_backbone(presets["vit"])
    embed, calls = failing.embed, []

    def dies_on_the_second_batch(batch):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return embed(batch)

    failing.embed = dies_on_the_second_batch
    with pytest.raises(KeyboardInterrupt):
        Extractor(failing, cache_dir=tmp_path, batch_size=4, verbose=False).extract(image_folder)

    resumed = resolve_backbone(presets["vit"])
    counts = _counting(resumed)
    result = Extractor(resumed, cache_dir=tmp_path, batch_size=4, verbose=False).extract(
        image_folder
    )
    assert sum(counts) == 8 and result.cache_hits == 4
    np.testing.assert_array_equal(result.X, expected)


def _fingerprint(backbone: str, **kwargs) -> str:
    return Extractor(backbone, cache_dir=None, **kwargs).fingerprint


def test_fingerprint_follows_preset_converter_pooling_and_weights(presets, tmp_path):
    base = _fingerprint(presets["vit"])
    # The same files elsewhere are the same preset: content, not path, identifies it.
    assert _fingerprint(f"hub:{_copy(presets, 'vit', tmp_path)}") == base
    assert _fingerprint(presets["vit"], pooling="mean") != base
    assert _fingerprint(presets["vit"], weights=None) != base
    assert _fingerprint(presets["cnn"], input_size=32) != base

    scaled = _copy(presets, "vit", tmp_path / "scaled")
    converter = json.loads((scaled / "image_converter.json").read_text())
    converter["config"]["scale"] = [1 / 255] * 3
    (scaled / "image_converter.json").write_text(json.dumps(converter))
    assert _fingerprint(f"hub:{scaled}") != base

    deeper = tmp_path / "deeper"
    _save(deeper, _vit(layers=3), keras_hub.layers.ImageConverter.from_preset(str(scaled)))
    assert _fingerprint(f"hub:{deeper}", weights=None) != _fingerprint(
        f"hub:{scaled}", weights=None
    )


def test_changed_preset_weights_are_never_served_stale(presets, tmp_path):
    folder = _copy(presets, "vit", tmp_path)
    before = resolve_backbone(f"hub:{folder}")  # its weights hashed, not yet loaded
    keras.utils.set_random_seed(9)
    _vit().save_weights(folder / "model.weights.h5")
    assert _fingerprint(f"hub:{folder}") != _fingerprint(presets["vit"])
    with pytest.raises(RuntimeError, match="changed since this extractor was created"):
        _ = before.dim


def _fill_kaggle_cache(presets) -> None:
    """Put the tiny ViT where kagglehub caches the built-in preset dinov2_small."""
    from kagglehub.cache import Cache
    from kagglehub.handle import parse_model_handle

    handle = parse_model_handle("keras/dinov2/keras/dinov2_small/1")
    source = Path(presets["vit"].removeprefix("hub:"))
    for name in ("config.json", "image_converter.json", "model.weights.h5"):
        target = Path(Cache().get_path(handle, name))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / name, target)
        Cache().mark_as_complete(handle, name)


def test_a_cached_built_in_preset_loads_offline_with_its_handle(presets):
    _fill_kaggle_cache(presets)
    backbone = resolve_backbone("hub:dinov2_small")  # the network is unreachable
    assert backbone._preset.source == "cache" and backbone._preset.version == "1"
    assert backbone.identity()["weights"].startswith(
        "hub:kaggle://keras/dinov2/keras/dinov2_small/1:sha256="
    )
    pixels = _pixels().astype(np.float32)
    local = resolve_backbone(presets["vit"]).embed(pixels)
    np.testing.assert_array_equal(backbone.embed(pixels), local)
    # A random baseline takes the cached config before featx's copy of the architecture.
    assert resolve_backbone("hub:dinov2_small", weights=None).dim == VIT_DIM


def test_a_cached_hugging_face_preset_records_its_commit(presets, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    repo = tmp_path / "hf" / "models--someone--tiny-vit"
    snapshot = repo / "snapshots" / "0123abcd"
    shutil.copytree(presets["vit"].removeprefix("hub:"), snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    backbone = resolve_backbone("hub:hf://someone/tiny-vit")
    assert (backbone._preset.source, backbone._preset.version) == ("cache", "0123abcd")
    assert backbone.identity()["weights"].startswith("hub:hf://someone/tiny-vit@0123abcd:")


def test_a_converter_that_pads_is_refused(presets, tmp_path):
    folder = _copy(presets, "vit", tmp_path)
    converter = json.loads((folder / "image_converter.json").read_text())
    converter["config"].update(crop_to_aspect_ratio=False, pad_to_aspect_ratio=True)
    (folder / "image_converter.json").write_text(json.dumps(converter))
    with pytest.raises(ValueError, match="pads images to its aspect ratio"):
        resolve_backbone(f"hub:{folder}")


def test_bfloat16_stays_close_to_float32(presets):
    pixels = _pixels().astype(np.float32)
    full = resolve_backbone(presets["vit"]).embed(pixels)
    half = resolve_backbone(presets["vit"], precision="bfloat16")
    assert half.identity()["precision"] == "bfloat16"
    low = half.embed(pixels)
    assert low.dtype == np.float32
    cosine = (full * low).sum(1) / np.linalg.norm(full, axis=1) / np.linalg.norm(low, axis=1)
    assert cosine.min() > 0.99


def test_resolve_preset_records_where_the_files_came_from(presets):
    preset = resolve_preset(presets["vit"], pretrained=True)
    assert preset.source == "directory" and preset.version is None
    assert [Path(p).name for p in preset.weights_files] == ["model.weights.h5"]
    assert preset.family.output == "tokens" and preset.family.prefix(preset.config["config"]) == 2


# -- everything downstream is unchanged ---------------------------------------------------------


def test_compare_runs_a_preset_beside_a_keras_application(presets, image_folder):
    result = compare(
        image_folder,
        backbones=[presets["vit"], {"backbone": "MobileNetV2", "weights": None, "input_size": 32}],
        heads=["logreg"], cv=2, cache_dir=None,
    )  # fmt: skip
    backbones = set(result.to_frame()["backbone"])
    # The baselines compare adds: the first backbone's architecture with random weights.
    assert {"hub:vit", "hub:vit (random weights)", "MobileNetV2 (random weights)"} <= backbones


def test_the_embedding_transformer_takes_a_preset(presets, image_folder):
    from featx import EmbeddingTransformer

    paths = sorted(str(p) for p in image_folder.rglob("*.*"))
    transformer = EmbeddingTransformer(presets["vit"], pooling="cls+mean", cache_dir=None)
    assert transformer.fit_transform(paths).shape == (12, 2 * VIT_DIM)


def test_tune_searches_token_poolings_from_one_extraction(presets, image_folder, tmp_path):
    from featx.cache import EmbeddingCache
    from featx.tuning import tune

    found = tune(
        image_folder, backbone=presets["vit"], cv=2, inner_cv=2, cache_dir=tmp_path,
        space={"input_size": [32], "tta": [None], "pooling": ["cls", "mean", "cls+mean"],
               "head": ["logreg"]},
        grids={"logreg": {"clf__C": [0.1]}},
    )  # fmt: skip
    assert sorted(found.results["pooling"]) == ["cls", "cls+mean", "mean"]
    cached = EmbeddingCache(tmp_path).info()["fingerprints"]
    assert [e["spec"]["backbone"]["pooling"] for e in cached] == ["cls+mean"]


def test_cli_lists_the_hub_presets(capsys):
    assert main(["backbones", "--hub", "--json"]) == 0
    rows = {r["backbone"]: r for r in json.loads(capsys.readouterr().out)["presets"]}
    assert rows["hub:dinov2_small"]["output"] == "tokens"
    assert rows["hub:resnet_50_imagenet"]["output"] == "feature_map"
    assert rows["hub:clip_vit_base_patch16"]["output"] == "embedding"


def test_cli_extracts_with_a_preset(presets, image_folder, tmp_path, capsys):
    out = tmp_path / "emb.npz"
    code = main(
        ["extract", str(image_folder), "--backbone", presets["vit"], "--weights", "none",
         "--pooling", "cls+mean", "--cache-dir", "none", "--out", str(out), "--json", "--quiet"]
    )  # fmt: skip
    assert code == 0
    assert json.loads(capsys.readouterr().out)["dim"] == 2 * VIT_DIM


def test_the_ray_engine_gives_the_local_vectors(presets, image_folder, tmp_path):
    ray = pytest.importorskip("ray", reason='the Ray engine is the "ray" extra')
    local = Extractor(presets["vit"], cache_dir=None, batch_size=4, verbose=False)
    expected = local.extract(image_folder).X
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = Extractor(
            presets["vit"], cache_dir=tmp_path, batch_size=4, verbose=False, engine="ray"
        )
        result = remote.extract(image_folder)
    finally:
        if started:
            ray.shutdown()
    assert result.cache_misses == 12
    np.testing.assert_array_equal(result.X, expected)
    again = Extractor(presets["vit"], cache_dir=tmp_path, batch_size=4, verbose=False)
    assert again.extract(image_folder).cache_hits == 12  # one cache for both engines
