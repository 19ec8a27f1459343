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
from featx.exporting import export

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


@pytest.mark.parametrize(
    ("backbone", "head", "head_params"),
    [
        ("MobileNetV2", "logreg", None),  # tf-mode preprocessing (x / 127.5 - 1)
        ("VGG16", "mlp", {"normalize": "l2", "pca": 6}),  # caffe mode: BGR flip, means
    ],
)
def test_exported_keras_model_gives_featx_probabilities_without_featx(
    backbone, head, head_params, pixels, tmp_path
):
    images, labels = pixels
    model = fit_classifier(
        images,
        labels=labels,
        head=head,
        head_params=head_params,
        backbone=backbone,
        weights=None,
        input_size=32,
        cache_dir=None,
        verbose=False,
    )
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
    model = fit_classifier(
        images,
        labels=labels,
        backbone="MobileNetV2",
        weights=None,
        input_size=32,
        cache_dir=None,
        verbose=False,
    )
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
    knn = fit_classifier(images, labels=labels, head="knn", input_size=32, **small)
    with pytest.raises(ValueError, match=r"does not export yet\. Heads that export: logreg, mlp"):
        export(knn, tmp_path / "knn.keras")
    sizes = fit_classifier(images, labels=labels, input_size=[32, 48], **small)
    with pytest.raises(ValueError, match="concatenates 2 representations"):
        export(sizes, tmp_path / "sizes.keras")
    tta = fit_classifier(images, labels=labels, input_size=32, tta="flip", **small)
    with pytest.raises(ValueError, match="test-time views"):
        export(tta, tmp_path / "tta.keras")
    logreg = fit_classifier(images, labels=labels, input_size=32, **small)
    with pytest.raises(ValueError, match=r"format=.tflite. writes a \.tflite file"):
        export(logreg, tmp_path / "m.keras", format="tflite")
    with pytest.raises(ValueError, match="format='onnx' is not supported"):
        export(logreg, tmp_path / "m.onnx", format="onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
