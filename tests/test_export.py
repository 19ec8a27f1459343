"""Exported classifiers: one Keras / SavedModel / TFLite model that gives featx's
probabilities in a process that imports only TensorFlow; clear refusals for the rest."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from featx.classifier import fit_classifier, save_classifier
from featx.cli import main
from featx.exporting import EXPORTABLE_HEADS, export
from featx.heads import HEAD_KINDS

# Runs in a fresh interpreter where importing featx or scikit-learn fails (Keras imports
# scikit-learn for its wrappers when it can; here it cannot): TensorFlow and Keras only, on
# the pixels featx classified, writing the probabilities it got.
_TF_ONLY = r"""
import json, sys


class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("featx", "sklearn"):
            raise ImportError(f"{name} is not available to an exported model")


sys.meta_path.insert(0, Blocked())
import numpy as np
import keras, tensorflow as tf
kind, path, pixels, out = sys.argv[1:5]
x = np.load(pixels)
if kind == "keras":
    got = keras.models.load_model(path).predict(x, verbose=0)
elif kind == "savedmodel":
    loaded = tf.saved_model.load(path)  # kept: its variables die with it
    got = loaded.serve(tf.constant(x)).numpy()
elif kind == "onnx":
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(["probabilities"], {"pixels": x})[0]
else:
    interpreter = tf.lite.Interpreter(model_path=path)
    inp, = interpreter.get_input_details()
    interpreter.resize_tensor_input(inp["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
np.save(out, got)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("featx", "sklearn"))
json.dump(leaked, sys.stdout)
"""


def _run_tf_only(kind, path, pixels, tmp_path):
    np.save(tmp_path / "pixels.npy", pixels)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _TF_ONLY,
            kind,
            str(path),
            str(tmp_path / "pixels.npy"),
            str(tmp_path / "got.npy"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []  # no featx, no sklearn
    return np.load(tmp_path / "got.npy")


def _pixels(n=24, size=32):
    rng = np.random.default_rng(0)
    dark = rng.integers(0, 120, (n // 2, size, size, 3))
    light = rng.integers(100, 255, (n // 2, size, size, 3))
    return np.concatenate([dark, light]).astype(np.uint8), ["dark"] * (n // 2) + ["light"] * (
        n // 2
    )


@pytest.fixture(scope="module")
def pixels():
    return _pixels()


@pytest.fixture(scope="module")
def three_classes():
    """Dark, middle and light images: a multiclass problem every head separates."""
    rng = np.random.default_rng(1)
    images = np.concatenate(
        [rng.integers(lo, lo + 100, (9, 32, 32, 3)) for lo in (0, 80, 155)]
    ).astype(np.uint8)
    return images, ["dark"] * 9 + ["middle"] * 9 + ["light"] * 9


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")  # the heads share one extraction


def _fit(images, labels, **settings):
    """A classifier on a random-weight network at 32 px, without a cache unless given."""
    params = dict(backbone="MobileNetV2", weights=None, input_size=32, cache_dir=None)
    return fit_classifier(images, labels=labels, verbose=False, **(params | settings))


def _load_safe(path):
    import keras

    return keras.models.load_model(path, safe_mode=True)


@pytest.mark.parametrize(
    ("backbone", "head", "head_params"),
    [
        ("MobileNetV2", "logreg", None),  # tf-mode preprocessing (x / 127.5 - 1)
        ("VGG16", "mlp", {"normalize": "l2", "pca": 6}),  # caffe mode: BGR flip, means
        ("MobileNetV2", "linear-svm", {"pca": 6}),  # calibrated folds, averaged
    ],
)
def test_exported_keras_model_gives_featx_probabilities_without_featx(
    backbone, head, head_params, pixels, tmp_path
):
    images, labels = pixels
    model = _fit(images, labels, head=head, head_params=head_params, backbone=backbone)
    result = export(model, tmp_path / "model.keras")
    assert result["head_max_difference"] <= 1e-5
    meta = json.loads((tmp_path / "model.keras.json").read_text())
    assert meta["classes"] == ["dark", "light"] and meta["input_size"] == [32, 32]
    got = _run_tf_only("keras", tmp_path / "model.keras", images, tmp_path)
    want = model.predict_proba(images)
    assert np.abs(got - want).max() <= 1e-4
    assert (got.argmax(1) == want.argmax(1)).all()


@pytest.mark.slow
def test_savedmodel_and_tflite_through_the_cli(pixels, tmp_path, capsys):
    images, labels = pixels
    model = _fit(images, labels)
    save_classifier(model, tmp_path / "m.featx")
    want = model.predict_proba(images)
    sizes = {}
    for fmt, out, extra in [
        ("savedmodel", "saved", []),
        ("tflite", "m.tflite", []),
        ("tflite", "m-dynamic.tflite", ["--quantize", "dynamic"]),
    ]:
        argv = ["export", str(tmp_path / "m.featx"), "--out", str(tmp_path / out)]
        assert main([*argv, "--format", fmt, *extra, "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        sizes[out] = result["bytes"]
        got = _run_tf_only(fmt, tmp_path / out, images, tmp_path)
        if extra:
            # int8 weights: a valid model, not featx's probabilities. On this random-weight
            # network they collapse to one class, so only that it runs is checked here.
            np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-4)
            continue
        assert np.abs(got - want).max() <= 1e-4, (out, np.abs(got - want).max())
        assert (got.argmax(1) == want.argmax(1)).all()
    assert (tmp_path / "saved" / "featx.json").is_file()
    assert sizes["m-dynamic.tflite"] < sizes["m.tflite"] / 2


def test_heads_and_settings_that_do_not_export_are_refused_with_what_does(pixels, tmp_path):
    images, labels = pixels
    small = dict(backbone="VGG16", weights=None, cache_dir=None, verbose=False)
    sizes = fit_classifier(images, labels=labels, input_size=[32, 48], **small)
    with pytest.raises(ValueError, match="concatenates 2 representations"):
        export(sizes, tmp_path / "sizes.keras")
    tta = fit_classifier(images, labels=labels, input_size=32, tta="flip", **small)
    with pytest.raises(ValueError, match="test-time views"):
        export(tta, tmp_path / "tta.keras")
    logreg = fit_classifier(images, labels=labels, input_size=32, **small)
    with pytest.raises(ValueError, match=r"format=.tflite. writes a \.tflite file"):
        export(logreg, tmp_path / "m.keras", format="tflite")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_exportable_heads_are_rows_of_the_head_table():
    assert set(EXPORTABLE_HEADS) <= set(HEAD_KINDS)
    assert len(EXPORTABLE_HEADS) >= 4  # logreg, linear-svm, mlp, sgd


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("kind", list(HEAD_KINDS))
def test_every_head_kind_exports_with_parity_or_is_refused_naming_those_that_do(
    kind, n_classes, pixels, three_classes, cache, tmp_path
):
    images, labels = pixels if n_classes == 2 else three_classes
    model = _fit(images, labels, head=kind, cache_dir=cache)
    path = tmp_path / f"{kind}.keras"
    if kind not in EXPORTABLE_HEADS:
        heads = ", ".join(EXPORTABLE_HEADS)
        with pytest.raises(ValueError, match=rf"does not export\. Heads that export: {heads}"):
            export(model, path)
        assert list(tmp_path.iterdir()) == []
        return
    result = export(model, path)
    assert result["head_max_difference"] <= 1e-5
    got = _load_safe(path).predict(images, verbose=0)
    want = model.predict_proba(images)
    assert got.shape == (len(images), n_classes)
    assert np.abs(got - want).max() <= 1e-4, np.abs(got - want).max()
    assert (got.argmax(1) == want.argmax(1)).all()


@pytest.mark.parametrize(
    "settings",
    [
        {"layer": "block_6_expand_relu"},  # an intermediate layer, pooled
        {"pooling": "avg+max"},  # two poolings concatenated
    ],
)
def test_a_layer_or_two_poolings_export_with_parity_and_class_order(
    settings, three_classes, tmp_path
):
    images, labels = three_classes
    # Classes given out of alphabetical order: the model's order is the classifier's.
    model = _fit(images, labels, **settings)
    export(model, tmp_path / "m.keras")
    meta = json.loads((tmp_path / "m.keras.json").read_text())
    assert meta["classes"] == [str(c) for c in model.classes_] == ["dark", "light", "middle"]
    for key, value in settings.items():
        assert meta[key] == value
    got = _load_safe(tmp_path / "m.keras").predict(images, verbose=0)
    want = model.predict_proba(images)
    assert np.abs(got - want).max() <= 1e-4, np.abs(got - want).max()
    assert [model.classes_[i] for i in got.argmax(1)] == list(model.predict(images))


def test_resize_takes_images_of_any_size_close_to_featx_resize(three_classes, tmp_path):
    from PIL import Image

    images, labels = three_classes
    model = _fit(images, labels, backbone="VGG16")
    # Larger originals (smooth: each pixel repeated 3x3 then 2 rows more), which featx
    # shrinks with Pillow and the model with its own Resizing layer.
    big = np.repeat(np.repeat(images, 3, axis=1), 3, axis=2)[:, :90, :, :]
    files = []
    for i, image in enumerate(big):
        files.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(image).save(files[-1])
    export(model, tmp_path / "m.keras", resize=True)
    meta = json.loads((tmp_path / "m.keras.json").read_text())
    assert meta["resize"] is True and "any size" in meta["input"]
    loaded = _load_safe(tmp_path / "m.keras")
    assert tuple(loaded.input.shape) == (None, None, None, 3)
    got = loaded.predict(big, verbose=0)
    want = model.predict_proba(files)
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9
    assert np.abs(got - want).max() < 0.2
    # Two sizes in two calls: the same model.
    assert loaded.predict(images[:2], verbose=0).shape == (2, 3)
    with pytest.raises(ValueError, match="ScaleAndTranslate, which neither TFLite nor ONNX has"):
        export(model, tmp_path / "m.tflite", format="tflite", resize=True)


@pytest.mark.slow
def test_int8_tflite_converts_with_representative_images_and_runs(three_classes, tmp_path):
    import tensorflow as tf

    images, labels = three_classes
    # A random MobileNetV2 at 32 px has near-zero activations, which int8 cannot hold.
    model = _fit(images, labels, backbone="VGG16")
    for kind in ("dark", "middle", "light"):
        (tmp_path / "train" / kind).mkdir(parents=True)
    from PIL import Image

    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(image).save(tmp_path / "train" / label / f"{i}.png")
    with pytest.raises(ValueError, match="quantize='int8' calibrates on representative"):
        export(model, tmp_path / "m.tflite", format="tflite", quantize="int8")
    save_classifier(model, tmp_path / "m.featx")
    argv = ["export", str(tmp_path / "m.featx"), "--out", str(tmp_path / "m.tflite")]
    argv += ["--format", "tflite", "--quantize", "int8"]
    assert main([*argv, "--representative", str(tmp_path / "train"), "--json"]) == 0
    interpreter = tf.lite.Interpreter(model_path=str(tmp_path / "m.tflite"))
    (inp,) = interpreter.get_input_details()
    assert inp["dtype"] == np.uint8
    dtypes = {t["index"]: t["dtype"] for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    # Full integer: every convolution and dense layer computes on int8 weights and inputs.
    matmuls = [op for op in ops if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED")]
    assert len(matmuls) >= 14  # VGG16's 13 convolutions and the head
    assert all(dtypes[i] == np.int8 for op in matmuls for i in op["inputs"][:2])
    interpreter.resize_tensor_input(inp["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], images)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    assert got.dtype == np.float32 and got.shape == (len(images), 3)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=0.02)  # int8 softmax steps
    assert json.loads((tmp_path / "m.tflite.json").read_text())["quantize"] == "int8"


@pytest.fixture(scope="module")
def small_logreg(pixels):
    images, labels = pixels
    return _fit(images, labels, backbone="VGG16")


def test_bad_inputs_are_refused_clearly_and_leave_nothing(small_logreg, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    bogus = tmp_path / "model.featx"
    bogus.write_bytes(b"PK\x03\x04 a zip file, not a classifier")
    assert main(["export", str(bogus), "--out", str(out / "m.keras")]) == 1
    assert "is not a featx classifier file: it lacks featx's header" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"format='coreml' is not supported\. Expected one of"):
        export(small_logreg, out / "m.mlmodel", format="coreml")
    with pytest.raises(ValueError, match="quantize='int4' is not supported"):
        export(small_logreg, out / "m.tflite", format="tflite", quantize="int4")
    with pytest.raises(ValueError, match="representative= calibrates quantize='int8' only"):
        export(small_logreg, out / "m.tflite", format="tflite", representative=out)
    a_file = out / "a-file"
    a_file.write_text("")
    with pytest.raises(OSError, match=r"its folder .*a-file' is a file"):
        export(small_logreg, a_file / "m.keras")
    with pytest.raises(OSError, match=r"its folder .*missing' does not exist"):
        export(small_logreg, out / "missing" / "m.keras")
    (out / "dir.keras").mkdir()
    with pytest.raises(OSError, match=r"dir\.keras': it is a folder"):
        export(small_logreg, out / "dir.keras")
    with pytest.raises(OSError, match=r"Cannot write the SavedModel folder .*: it is a file"):
        export(small_logreg, a_file, format="savedmodel")
    assert sorted(p.name for p in out.iterdir()) == ["a-file", "dir.keras"]
    assert list((out / "dir.keras").iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused(small_logreg, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(OSError, match="is not writable"):
        export(small_logreg, locked / "m.keras")


@pytest.mark.parametrize(("fmt", "name"), [("savedmodel", "saved"), ("tflite", "m.tflite")])
def test_a_write_that_fails_midway_leaves_no_partial_model(
    fmt, name, small_logreg, tmp_path, monkeypatch
):
    import keras

    import featx.exporting

    def half_written_savedmodel(self, path, **kwargs):
        os.makedirs(os.path.join(path, "variables"))
        with open(os.path.join(path, "saved_model.pb"), "wb") as f:
            f.write(b"\0" * 100)
        raise OSError(28, "No space left on device")

    def failed_conversion(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keras.Model, "export", half_written_savedmodel)
    monkeypatch.setattr(featx.exporting, "_tflite", failed_conversion)
    with pytest.raises(OSError, match="No space left"):
        export(small_logreg, tmp_path / name, format=fmt)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_onnx_gives_featx_probabilities_in_onnxruntime(three_classes, tmp_path):
    pytest.importorskip("tf2onnx")
    pytest.importorskip("onnxruntime")
    images, labels = three_classes
    model = _fit(images, labels, head="linear-svm", head_params={"pca": 6})
    save_classifier(model, tmp_path / "m.featx")
    argv = ["export", str(tmp_path / "m.featx"), "--out", str(tmp_path / "m.onnx")]
    assert main([*argv, "--format", "onnx"]) == 0
    assert json.loads((tmp_path / "m.onnx.json").read_text())["classes"] == list(model.classes_)
    got = _run_tf_only("onnx", tmp_path / "m.onnx", images, tmp_path)
    want = model.predict_proba(images)
    assert np.abs(got - want).max() <= 1e-4, np.abs(got - want).max()
    assert (got.argmax(1) == want.argmax(1)).all()
    with pytest.raises(ValueError, match="resize=True does not export to format='onnx'"):
        export(model, tmp_path / "r.onnx", format="onnx", resize=True)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".npy") == [
        "m.featx",
        "m.onnx",
        "m.onnx.json",
    ]
