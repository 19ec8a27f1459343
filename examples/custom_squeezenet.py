"""Your own keras.Model as a backbone: SqueezeNet v1.1 with real ImageNet weights.

SqueezeNet is not a keras.applications model, so featx has no registry entry for it.
Define the network, load its weights, and give featx the model with its preprocessing
(``preprocess=``, here Caffe's: BGR channels minus the ImageNet means). featx then
caches, pools and evaluates it like any registry model. ``featx.compare`` scores it
against the shared MobileNetV2 on intel6 (5-fold nested CV), next to the two baselines
that show what pretraining is worth: raw pixels and MobileNetV2 with random weights.

    python examples/custom_squeezenet.py                 # 2,158 photos, a few minutes
    python examples/custom_squeezenet.py --per-class 20  # a quick look
"""

from __future__ import annotations

import h5py
import keras
from _data import arguments, photos
from keras import layers

import featx

IMAGENET_BGR_MEANS = (103.939, 116.779, 123.68)


def fire(x, index: int, squeeze: int, expand: int):
    """A fire module: a 1x1 squeeze, then 1x1 and 3x3 expansions side by side."""
    x = layers.Conv2D(squeeze, 1, activation="relu", name=f"fire{index}_squeeze1x1")(x)
    left = layers.Conv2D(expand, 1, activation="relu", name=f"fire{index}_expand1x1")(x)
    right = layers.Conv2D(
        expand, 3, padding="same", activation="relu", name=f"fire{index}_expand3x3"
    )(x)
    return layers.Concatenate(name=f"fire{index}_concat")([left, right])


def squeezenet(weights_file, input_size: int = 227) -> keras.Model:
    """SqueezeNet v1.1 without its classifier, weights read from the Keras-2 HDF5 file.

    Keras 3 does not allow "/" in layer names, so the file's ``fire2/squeeze1x1`` is this
    model's ``fire2_squeeze1x1``, and the weights are copied over by name.
    """
    inputs = keras.Input((input_size, input_size, 3))
    x = layers.Conv2D(64, 3, strides=2, activation="relu", name="conv1")(inputs)
    x = layers.MaxPooling2D(3, 2)(x)
    x = fire(fire(x, 2, 16, 64), 3, 16, 64)
    x = layers.MaxPooling2D(3, 2)(x)
    x = fire(fire(x, 4, 32, 128), 5, 32, 128)
    x = layers.MaxPooling2D(3, 2)(x)
    for index, squeeze, expand in [(6, 48, 192), (7, 48, 192), (8, 64, 256), (9, 64, 256)]:
        x = fire(x, index, squeeze, expand)
    model = keras.Model(inputs, x, name="squeezenet_v1_1")
    with h5py.File(weights_file, "r") as f:
        for layer in model.layers:
            if isinstance(layer, layers.Conv2D):
                arrays = _arrays(f[layer.name.replace("_", "/")])
                kernel = next(a for a in arrays if a.ndim == 4)
                bias = next(a for a in arrays if a.ndim == 1)
                layer.set_weights([kernel, bias])
    return model


def _arrays(group: h5py.Group) -> list:
    """Every array stored under an HDF5 group (the file nests them one level deeper)."""
    found: list = []
    group.visititems(
        lambda _, item: found.append(item[()]) if isinstance(item, h5py.Dataset) else None
    )
    return found


def caffe_preprocess(x):
    """0-255 RGB to what the Caffe-trained SqueezeNet expects: BGR minus the channel means."""
    return x[..., ::-1] - keras.ops.convert_to_tensor(IMAGENET_BGR_MEANS, dtype=x.dtype)


args = arguments(__doc__)
images = photos(args.shared / "datasets" / "intel6", args.per_class)
table = featx.compare(
    images,
    backbones=[
        {
            "backbone": "MobileNetV2",
            "weights": args.shared / "weights" / "mobilenet_v2_1.0_160_no_top.weights.h5",
            "input_size": 160,
            "label": "MobileNetV2 (shared weights)",
        },
        {
            "backbone": squeezenet(args.shared / "weights" / "squeezenet_v1.1_no_top.h5"),
            "preprocess": caffe_preprocess,
            "label": "SqueezeNet v1.1 (ImageNet)",
        },
    ],
    heads=["logreg"],
    cache_dir=args.cache_dir,
).table
print(table[["backbone", "accuracy", "accuracy_std", "dim", "ms_per_image"]].to_string(index=False))
