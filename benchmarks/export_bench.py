"""Exported classifiers against featx's own predictions, on clothing10.

Trains a logistic regression and an MLP on clothing10's train+validation with the shared
MobileNetV2 weights at 160 px, exports each as .keras, SavedModel, TFLite float32, TFLite
dynamic-range, TFLite int8 (calibrated on 200 training images) and ONNX (run by
onnxruntime), and runs every export
on the test split's pixels as featx decodes them (Pillow, 160x160), in batches of 32.
Prints, per export: file size, test accuracy, argmax agreement with featx's predictions,
the largest probability difference, and images/s beside featx's own predict_proba on the
same pixels. Then ``resize=True``: 50 test photos given at their own size to a .keras
model that resizes them itself, against featx's predictions on the same files.

    nice python benchmarks/export_bench.py [--shared ../shared] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FORMATS = [
    ("keras", "keras", None, "m.keras"),
    ("savedmodel", "savedmodel", None, "saved"),
    ("tflite float32", "tflite", None, "m.tflite"),
    ("tflite dynamic", "tflite", "dynamic", "m-dynamic.tflite"),
    ("tflite int8", "tflite", "int8", "m-int8.tflite"),
    ("onnx (onnxruntime)", "onnx", None, "m.onnx"),
]
BATCH = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default=os.environ.get("FEATX_SHARED", "../shared"))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--resize-images", type=int, default=50)
    args = parser.parse_args()
    root = Path(args.shared) / "datasets" / "clothing10"
    weights = Path(args.shared) / "weights" / "mobilenet_v2_1.0_160_no_top.weights.h5"

    from featx import __version__
    from featx.classifier import fit_classifier
    from featx.images import decode
    from featx.sources import resolve_source

    print(f"# featx export benchmark, {time.strftime('%Y-%m-%d')}\n")
    print(f"Command: `nice python benchmarks/export_bench.py --shared {args.shared}`  ")
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    print(
        f"featx {__version__}, TensorFlow {tf.__version__}, Python {platform.python_version()},"
        f" {platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs), TFLite and "
        f"onnxruntime threads {args.threads}, tf2onnx {tf2onnx.__version__}, onnxruntime "
        f"{onnxruntime.__version__}\n"
    )
    test = resolve_source(root / "test")
    names = np.asarray([test.classes[i] for i in test.y])
    started = time.perf_counter()
    pixels = np.stack([decode(Path(p).read_bytes(), (160, 160), name=p) for p in test.inputs])
    print(f"{len(pixels)} test images decoded by featx in {time.perf_counter() - started:.1f} s")

    work = Path(tempfile.mkdtemp(prefix="featx-export-bench-"))
    rows = []
    models = {}
    for head in ("logreg", "mlp"):
        started = time.perf_counter()
        model = fit_classifier(
            root,
            head=head,
            backbone="MobileNetV2",
            weights=str(weights),
            input_size=160,
            cache_dir=work / "cache",  # the second head reuses the first one's embeddings
            verbose=False,
        )
        print(f"{head}: trained in {time.perf_counter() - started:.0f} s")
        models[head] = model
        model[0].set_params(cache_dir=None, batch_size=BATCH)  # featx timed without a cache
        model.predict_proba(pixels[:BATCH])  # warm
        started = time.perf_counter()
        want = model.predict_proba(pixels)
        featx_speed = len(pixels) / (time.perf_counter() - started)
        classes = np.asarray([str(c) for c in model.classes_])
        featx_accuracy = np.mean(classes[want.argmax(1)] == names)
        rows.append((head, "featx (scikit-learn)", None, featx_accuracy, 1.0, 0.0, featx_speed))
        for label, fmt, quantize, name in FORMATS:
            out = work / f"{head}-{name}"
            extra = {"representative": str(root / "train")} if quantize == "int8" else {}
            started = time.perf_counter()
            result = _export(model, out, fmt, quantize, extra)
            if isinstance(result, str):
                print(f"{head} {label}: export failed: {result}")
                continue
            print(f"{head} {label}: exported in {time.perf_counter() - started:.0f} s")
            got, speed = _run(fmt, out, pixels, args.threads)
            rows.append(
                (
                    head,
                    label,
                    result["bytes"],
                    np.mean(classes[got.argmax(1)] == names),
                    np.mean(got.argmax(1) == want.argmax(1)),
                    float(np.abs(got - want).max()),
                    speed,
                )
            )
    print(
        "\n| head | model | size (MB) | test accuracy | argmax = featx | max abs prob. diff "
        "| images/s |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for head, label, size, accuracy, agree, diff, speed in rows:
        size_text = "-" if size is None else f"{size / 1e6:.1f}"
        print(
            f"| {head} | {label} | {size_text} | {accuracy:.3f} | {agree:.3f} | {diff:.2g} "
            f"| {speed:.0f} |"
        )
    _resize_check(models["logreg"], test, work, args.resize_images)


def _export(model, out: Path, fmt: str, quantize: str | None, extra: dict) -> dict | str:
    from featx.exporting import export

    try:
        return export(model, out, format=fmt, quantize=quantize, **extra)
    except Exception as exc:  # a failed export is a result too
        return f"{type(exc).__name__}: {exc}"


def _run(fmt: str, path: Path, pixels: np.ndarray, threads: int) -> tuple[np.ndarray, float]:
    """The exported model's probabilities on ``pixels`` in batches, and images/s."""
    import keras
    import tensorflow as tf

    if fmt == "keras":
        model = keras.models.load_model(path)

        def predict(x):
            return model.predict_on_batch(x)
    elif fmt == "savedmodel":
        loaded = tf.saved_model.load(str(path))

        def predict(x):
            return loaded.serve(tf.constant(x)).numpy()
    elif fmt == "onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )

        def predict(x):
            return session.run(["probabilities"], {"pixels": x})[0]
    else:
        interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=threads)
        (inp,) = interpreter.get_input_details()
        output = interpreter.get_output_details()[0]["index"]
        shape = [None]

        def predict(x):
            if shape[0] != x.shape:
                interpreter.resize_tensor_input(inp["index"], x.shape)
                interpreter.allocate_tensors()
                shape[0] = x.shape
            interpreter.set_tensor(inp["index"], x)
            interpreter.invoke()
            return interpreter.get_tensor(output).copy()

    predict(pixels[:BATCH])  # warm: tracing, allocation
    started = time.perf_counter()
    got = np.concatenate([predict(pixels[i : i + BATCH]) for i in range(0, len(pixels), BATCH)])
    return got.astype(np.float64), len(pixels) / (time.perf_counter() - started)


def _resize_check(model, test, work: Path, n: int) -> None:
    """resize=True against featx: photos at their own size in, featx's predictions on
    the same files (Pillow's resize after JPEG draft decoding) as the reference."""
    import keras
    from PIL import Image, ImageOps

    from featx.exporting import export

    rng = np.random.default_rng(0)
    chosen = sorted(rng.choice(len(test), n, replace=False))
    files = [test.inputs[i] for i in chosen]
    export(model, work / "resize.keras", resize=True)
    exported = keras.models.load_model(work / "resize.keras")
    got = []
    sizes = set()
    for f in files:
        with Image.open(f) as img:
            rgb = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
        sizes.add(rgb.shape[:2])
        got.append(exported.predict_on_batch(rgb[None])[0])
    got = np.asarray(got, np.float64)
    want = model.predict_proba(files)
    diff = np.abs(got - want)
    print(
        f"\nresize=True (logreg, .keras), {n} test photos at their own size "
        f"({len(sizes)} sizes, e.g. {sorted(sizes)[0]}): max abs probability difference "
        f"{diff.max():.3f}, mean {diff.mean():.4f}, argmax agreement "
        f"{np.mean(got.argmax(1) == want.argmax(1)):.3f} "
        f"({int(np.sum(got.argmax(1) == want.argmax(1)))}/{n})"
    )
    print(json.dumps({"resize_max": diff.max(), "resize_mean": diff.mean()}))


if __name__ == "__main__":
    sys.exit(main())
