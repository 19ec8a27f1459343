"""featx extraction speed against the forward pass and two hand-written baselines.

One command measures, on the same images, backbone and input size, each mode in its own
fresh subprocess (so each one's peak RSS, ``VmHWM``, is its own high-water mark; every
process pays the same TensorFlow import and model build, which are not timed):

- **forward**: the images decoded beforehand (featx's decoder) into fixed-shape float32
  batches, then only the compiled function featx calls (``KerasBackbone.embed``) is
  timed. This is the hardware limit. It runs first and again last; the table's reference
  is the mean of the two, and their difference shows how much the machine drifted.
- **(a) tutorial**: ``keras.utils.load_img(path, target_size=...)`` per file,
  ``img_to_array``, ``np.stack``, the family's ``preprocess_input``, then
  ``model.predict(x, batch_size=B)``; ``predict`` is called once on a dummy batch first.
- **(b) tf.data**: ``tf.io.read_file`` + ``tf.io.decode_image`` + ``tf.image.resize`` in
  ``map(num_parallel_calls=AUTOTUNE)``, ``batch(B)``, ``preprocess_input``,
  ``prefetch(AUTOTUNE)``, each batch through a ``tf.function`` calling the model (traced
  beforehand with a ``None`` batch dimension, so the last, smaller batch does not retrace).
- **featx cold**: ``Extractor.extract(folder)`` into an empty cache, after the model was
  built and traced (``backbone.embed`` on one zero batch): hashing, decoding, compute,
  cache writes.
- **featx cold fast**: the same with ``decoder="fast"`` (libjpeg-turbo + OpenCV for
  JPEGs instead of the default Pillow): what it gains, and its peak RSS beside it.
- **featx warm**: a new ``Extractor`` over the cache the cold run filled.
- **forward bf16 / featx cold bf16**: the same with ``precision="bfloat16"``.

All modes use TensorFlow's default intra/inter-op thread settings and batch ``B``; the
table prints them. Each row also gives the process's CPU seconds, the CPU seconds used by
*other* processes during the timed part (``/proc/stat``; large values mean a disturbed
measurement) and the 1-minute load average at its start.

``--fidelity`` compares bfloat16 with float32 embeddings (mean cosine similarity, and
the change in logistic-regression test accuracy, clothing10 train -> test):
MobileNetV2 @160 with the shared pretrained weights, ResNet50 @224 with random weights
(all we have; on those features accuracy is low and the comparison only shows whether
bfloat16 changes what a classifier can read from the same random features).

``--decoder-fidelity`` compares the two decoders' embeddings: MobileNetV2 @160 with the
shared pretrained weights on clothing10 (train -> test) and intel6 (5-fold stratified
cross-validation, the same folds for both): mean cosine similarity of ``"fast"`` to
``"pillow"`` vectors, and the logistic-regression accuracy of each (targets: cosine
>= 0.995, accuracy within 0.005).

``--rss`` is the streaming check: 10,000 JPEGs made by re-encoding crops and flips of the
shared images into a temporary folder, then featx cold over the first 1,000 and over all
10,000 in separate processes, and baseline (a) over 1,000 and ``--rss-tutorial-n``
(it holds every decoded image in memory, so its peak grows with N).

Run from the repository root::

    python benchmarks/speed_table.py                    # the full table (~20 min, 2 CPUs)
    python benchmarks/speed_table.py --limit 200 --configs MobileNetV2@160   # quick
    python benchmarks/speed_table.py --fidelity --rss --configs none
    python benchmarks/speed_table.py --decoder-fidelity --configs none

The shared data folder is ``$FEATX_SHARED``, else ``../shared`` next to the repository.
ResNet50 and ``hub:dinov2_small`` (keras-hub's DINOv2 ViT-S/14 at 224 px, random weights,
forward and featx modes only) are measured on ``--resnet-limit`` images (default 320)
spread over the folder, because at 224 px they run at 10-20 images/s on 2 cores;
``--limit`` does the same for MobileNetV2. The table prints N for each configuration.
Each mode is timed ``--repeat`` times (default 2) in its process and the fastest pass is
kept (other processes only ever slow a pass down); the tutorial loop is timed once.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract_speed import batches_of, image_paths, measure, subset_folder

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FEATX_SHARED") or REPO.parent / "shared")
CLOTHING10 = SHARED / "datasets" / "clothing10"
INTEL6 = SHARED / "datasets" / "intel6"
MOBILENET_WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_160_no_top.weights.h5"
# hub:dinov2_small is keras-hub's DINOv2 ViT-S/14 (random weights, from featx's copy of its
# architecture, so it runs offline); forward and featx modes only, (a)/(b) are keras.applications'.
DEFAULT_CONFIGS = "MobileNetV2@224,MobileNetV2@160,ResNet50@224,hub:dinov2_small@224"
HUB_MODES_SKIPPED = ("tutorial", "tfdata")
# (label, ratio key, lowest passing value): the speed issue's targets, for the
# keras.applications configurations (MobileNetV2, ResNet50); warm/cold for every one.
TARGETS = (
    ("cold/forward", "cold/forward", 0.95),
    ("cold/(b)", "cold/(b) tf.data", 1.05),
    ("cold/(a)", "cold/(a) tutorial", 2.0),
    ("warm/cold", "warm/cold", 100.0),
)
# Decoder fidelity targets: mean cosine of "fast" to "pillow" vectors, accuracy change.
DECODER_COSINE, DECODER_ACCURACY = 0.995, 0.005
MODES = (
    "forward",
    "tutorial",
    "tfdata",
    "featx-cold",
    "featx-cold-fast",
    "featx-warm",
    "forward-bf16",
    "featx-cold-bf16",
    "forward-again",
)
LABELS = {
    "forward": "forward (pre-decoded)",
    "tutorial": "(a) load_img + predict",
    "tfdata": "(b) tf.data + tf.function",
    "featx-cold": "featx cold",
    "featx-cold-fast": "featx cold, decoder fast",
    "featx-warm": "featx warm",
    "forward-bf16": "forward bfloat16",
    "featx-cold-bf16": "featx cold bfloat16",
    "forward-again": "forward again",
}


def spread(paths: list[str], n: int) -> list[str]:
    """``n`` of ``paths`` evenly spread, so that a subset covers every class folder."""
    step = max(1, len(paths) // n)
    return paths[::step][:n]


# -- one mode, in a worker process ----------------------------------------------------------


def _peak_rss_mb() -> float:
    """This process's peak resident memory, in MB.

    ``VmHWM`` belongs to the process's own address space, which ``exec`` starts afresh.
    ``ru_maxrss`` is not used where ``VmHWM`` exists: on Linux it also keeps the peak of
    the address space replaced by ``exec``, the parent's when the parent forks with
    ``vfork`` (as ``subprocess`` does), so a child would report at least the parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _keras_model(backbone: str, size: int, precision: str = "float32"):
    """The network as featx builds it (random weights: speed does not depend on them)."""
    from featx.backbones import resolve_backbone

    return resolve_backbone(backbone, weights=None, input_size=size, precision=precision)


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Run one mode on ``args.folder`` ``args.repeat`` times; return the fastest pass."""
    import keras
    import tensorflow as tf

    from featx import Extractor
    from featx.images import decode

    if args.tf_threads:
        intra, inter = (int(t) for t in args.tf_threads.split(","))
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    mode, size, bs = args.worker, args.size, args.batch_size
    paths = image_paths(Path(args.folder), None)
    n = len(paths)
    load1 = os.getloadavg()[0]
    precision = "bfloat16" if mode.endswith("bf16") else "float32"
    extra: dict[str, Any] = {}

    if mode.startswith("forward"):
        backbone = _keras_model(args.backbone, size, precision)

        def decode_file(path: str) -> np.ndarray:
            with open(path, "rb") as f:
                return decode(f.read(), (size, size))

        pixels = np.stack([decode_file(p) for p in paths])
        batches = batches_of(pixels, bs)
        del pixels
        backbone.embed(batches[0])  # build + trace + first call, not timed

        def run(_: int) -> None:
            for batch in batches:
                backbone.embed(batch)

    elif mode in ("tutorial", "tfdata"):
        model = keras.applications.__dict__[args.backbone](
            include_top=False, weights=None, pooling="avg", input_shape=(size, size, 3)
        )
        family = _keras_model(args.backbone, size)._spec.preprocess_input()

        if mode == "tutorial":
            model.predict(np.zeros((bs, size, size, 3), np.float32), batch_size=bs, verbose=0)

            def run(_: int) -> None:
                arrays = [
                    keras.utils.img_to_array(keras.utils.load_img(p, target_size=(size, size)))
                    for p in paths
                ]
                model.predict(family(np.stack(arrays)), batch_size=bs, verbose=0)

        else:

            def load(path):
                data = tf.io.read_file(path)
                image = tf.io.decode_image(data, channels=3, expand_animations=False)
                return tf.image.resize(image, (size, size))

            dataset = (
                tf.data.Dataset.from_tensor_slices(paths)
                .map(load, num_parallel_calls=tf.data.AUTOTUNE)
                .batch(bs)
                .map(family, num_parallel_calls=tf.data.AUTOTUNE)
                .prefetch(tf.data.AUTOTUNE)
            )

            @tf.function(input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)])
            def embed(x):
                return model(x, training=False)

            embed(tf.zeros((bs, size, size, 3)))  # trace, not timed

            def run(_: int) -> None:
                for batch in dataset:
                    embed(batch).numpy()

    else:  # featx cold / warm

        def extractor(cache: str, backbone: Any = args.backbone) -> Extractor:
            return Extractor(
                backbone,
                weights=None,
                input_size=size,
                batch_size=bs,
                cache_dir=cache,
                precision=precision,
                decoder="fast" if mode.endswith("fast") else "pillow",
                verbose=False,
            )

        cold = mode.startswith("featx-cold")
        built = extractor(args.cache).backbone
        if cold:
            built.embed(np.zeros((bs, size, size, 3), np.float32))  # build + trace

        def run(k: int) -> None:
            # Every cold pass starts from an empty cache, with the model already built (the
            # first pass fills the cache the warm mode reads); every warm pass is a new
            # Extractor, which needs no model.
            if cold:
                this = extractor(args.cache if k == 0 else f"{args.cache}-{k}", built)
            else:
                this = extractor(args.cache)
            result = this.extract(args.folder)
            extra.update(cache_hits=result.cache_hits, cache_misses=result.cache_misses)
            if result.cache_misses != (n if cold else 0):
                raise RuntimeError(f"{mode}: {result.cache_misses} misses of {n} images")

    passes = []
    # The tutorial loop is far from its target and the slowest mode: one pass is enough.
    for k in range(1 if mode == "tutorial" else args.repeat):
        with measure(mode, n) as timing:
            run(k)
        passes.append(timing)
    timing = min(passes, key=lambda t: t.seconds)
    extra["passes_images_per_second"] = [round(t.images_per_second, 1) for t in passes]

    out = timing.as_dict()
    out.update(
        peak_rss_mb=round(_peak_rss_mb(), 1),
        load1=round(load1, 2),
        tf_threads=[
            tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads(),
        ],
        **extra,
    )
    return out


def run_worker(
    mode: str,
    folder: Path,
    backbone: str,
    size: int,
    bs: int,
    cache: Path,
    repeat: int = 1,
    tf_threads: str | None = None,
) -> dict:
    """Start a fresh process for one mode; return what it measured."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        mode,
        "--folder",
        str(folder),
        "--backbone",
        backbone,
        "--size",
        str(size),
        "--batch-size",
        str(bs),
        "--cache",
        str(cache),
        "--repeat",
        str(repeat),
        *(["--tf-threads", tf_threads] if tf_threads else []),
    ]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{mode} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


# -- the table ------------------------------------------------------------------------------


def measure_config(backbone: str, size: int, folder: Path, limit: int | None, args) -> dict:
    """Every mode for one (backbone, size), each in its own process."""
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="featx-speed-") as tmp:
        if limit is not None:
            folder = subset_folder(
                folder, spread(image_paths(folder, None), limit), Path(tmp) / "i"
            )
        for mode in args.modes:
            if backbone.startswith("hub:") and mode in HUB_MODES_SKIPPED:
                continue
            cache = Path(tmp) / (f"cache-{mode}" if mode.startswith("featx-cold-") else "cache")
            print(f"  {backbone}@{size}: {mode} ...", file=sys.stderr, flush=True)
            rows[mode] = run_worker(
                mode, folder, backbone, size, args.batch_size, cache, args.repeat, args.tf_threads
            )
    forwards = [rows[m]["images_per_second"] for m in ("forward", "forward-again") if m in rows]
    reference = sum(forwards) / len(forwards) if forwards else float("nan")
    ips = {m: r["images_per_second"] for m, r in rows.items()}
    ratios = {
        "cold/forward": ips.get("featx-cold", np.nan) / reference,
        "cold/(b) tf.data": ips.get("featx-cold", np.nan) / ips.get("tfdata", np.nan),
        "cold/(a) tutorial": ips.get("featx-cold", np.nan) / ips.get("tutorial", np.nan),
        "warm/cold": ips.get("featx-warm", np.nan) / ips.get("featx-cold", np.nan),
        "cold fast/pillow": ips.get("featx-cold-fast", np.nan) / ips.get("featx-cold", np.nan),
        "(b)/forward": ips.get("tfdata", np.nan) / reference,
        "(a)/forward": ips.get("tutorial", np.nan) / reference,
        "bf16/f32 forward": ips.get("forward-bf16", np.nan) / reference,
        "bf16/f32 featx cold": ips.get("featx-cold-bf16", np.nan) / ips.get("featx-cold", np.nan),
    }
    cpu_per_image = {m: r["cpu_seconds"] / r["n_images"] for m, r in rows.items()}
    forward_cpu = [cpu_per_image[m] for m in ("forward", "forward-again") if m in rows]
    if forward_cpu and "featx-cold" in rows:
        # Steadier than wall time when other processes share the CPUs.
        ratios["cold/forward by CPU-s"] = np.mean(forward_cpu) / cpu_per_image["featx-cold"]
    if forward_cpu and "featx-cold-fast" in rows:
        fast = cpu_per_image["featx-cold-fast"]
        ratios["cold fast/forward by CPU-s"] = np.mean(forward_cpu) / fast
        if "featx-cold" in rows:
            ratios["cold fast/pillow by CPU-s"] = cpu_per_image["featx-cold"] / fast
    if "tfdata" in rows and "featx-cold" in rows:
        ratios["cold/(b) by CPU-s"] = cpu_per_image["tfdata"] / cpu_per_image["featx-cold"]
    if forward_cpu and "forward-bf16" in rows:
        ratios["bf16/f32 forward by CPU-s"] = np.mean(forward_cpu) / cpu_per_image["forward-bf16"]
    return {
        "backbone": backbone,
        "size": size,
        "batch_size": args.batch_size,
        "n_images": next(iter(rows.values()))["n_images"] if rows else 0,
        "forward_reference": reference,
        "rows": rows,
        "ratios": {k: round(float(v), 3) for k, v in ratios.items()},
    }


def format_config(c: dict) -> str:
    header = (
        "| mode | img/s | x forward | seconds | CPU-s | other CPU-s | load1 | peak RSS MB |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    first = next(iter(c["rows"].values()))
    lines = [
        f"**{c['backbone']} @ {c['size']} px**, N = {c['n_images']} images, batch "
        f"{c['batch_size']}, TF intra/inter-op threads {first['tf_threads']} (0: default)",
        "",
        header,
    ]
    for mode, r in c["rows"].items():
        other = r["other_cpu_seconds"]
        lines.append(
            f"| {LABELS[mode]} | {r['images_per_second']:.1f} | "
            f"{r['images_per_second'] / c['forward_reference']:.2f} | {r['seconds']:.1f} | "
            f"{r['cpu_seconds']:.1f} | {'' if other is None else f'{other:.1f}'} | "
            f"{r['load1']:.2f} | {r['peak_rss_mb']:.0f} |"
        )
    lines.append("")
    lines.append(
        "ratios: " + ", ".join(f"{k} **{v:.2f}**" for k, v in c["ratios"].items() if v == v)
    )
    # The speed targets are set for the keras.applications networks; warm/cold for all.
    applications = not c["backbone"].startswith("hub:")
    checks = [
        f"{name} >= {low}: {'met' if value >= low else 'NOT met'}"
        for name, key, low in TARGETS
        if (value := c["ratios"].get(key, np.nan)) == value
        and (applications or name == "warm/cold")
    ]
    rss = {m: r["peak_rss_mb"] for m, r in c["rows"].items()}
    if "featx-cold" in rss and "featx-cold-fast" in rss:
        checks.append(
            f"peak RSS fast - pillow: {rss['featx-cold-fast'] - rss['featx-cold']:+.0f} MB"
        )
    lines.append("targets: " + ", ".join(checks))
    return "\n".join(lines)


def format_fidelity(rows: list[dict]) -> str:
    lines = [
        "| backbone | weights | N train / test | mean cosine (min) | centred cosine | "
        "logreg acc float32 | bfloat16 | change |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for f in rows:
        weights = "random" if f["weights"] == "None" else Path(f["weights"]).name
        lines.append(
            f"| {f['backbone']} @ {f['size']} | {weights} | {f['n_train']} / {f['n_test']} | "
            f"{f['cosine_mean']:.4f} ({f['cosine_min']:.4f}) | {f['centred_cosine_mean']:.4f} | "
            f"{f['accuracy_float32']:.3f} | "
            f"{f['accuracy_bfloat16']:.3f} | {f['accuracy_change']:+.3f} |"
        )
    return "\n".join(lines)


def format_rss(rss: dict) -> str:
    lines = ["| run (MobileNetV2 @ 160) | N | peak RSS MB | img/s |", "|---|---:|---:|---:|"]
    for name, r in rss.items():
        lines.append(
            f"| {LABELS[name.split()[0]]} | {r['n_images']} | {r['peak_rss_mb']:.0f} | "
            f"{r['images_per_second']:.1f} |"
        )
    cold = [r["peak_rss_mb"] for name, r in rss.items() if name.startswith("featx-cold")]
    if len(cold) == 2:
        growth = cold[1] - cold[0]
        lines += [
            "",
            f"featx cold peak RSS growth 1,000 -> 10,000 images: {growth:+.0f} MB "
            f"(target <= 300 MB: {'met' if growth <= 300 else 'NOT met'})",
        ]
    return "\n".join(lines)


# -- bfloat16 fidelity -----------------------------------------------------------------------


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def fidelity(backbone: str, size: int, weights, train_limit: int | None) -> dict:
    """Mean cosine of bfloat16 to float32 embeddings, and logreg test accuracy of each."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from featx import Extractor

    out: dict[str, Any] = {"backbone": backbone, "size": size, "weights": str(weights)}
    with tempfile.TemporaryDirectory(prefix="featx-fidelity-") as tmp:
        train = CLOTHING10 / "train"
        if train_limit is not None:
            train = subset_folder(
                train, spread(image_paths(train, None), train_limit), Path(tmp) / "train"
            )
        X: dict[str, dict] = {}
        for precision in ("float32", "bfloat16"):
            ex = Extractor(
                backbone,
                weights=weights,
                input_size=size,
                cache_dir=None,
                precision=precision,
                verbose=False,
            )
            X[precision] = {
                split: ex.extract(str(folder))
                for split, folder in (("train", train), ("test", CLOTHING10 / "test"))
            }
    f32, b16 = X["float32"], X["bfloat16"]
    both = (
        np.concatenate([f32["train"].X, f32["test"].X]),
        np.concatenate([b16["train"].X, b16["test"].X]),
    )
    cos = _cosine(*both)
    # Random-weight networks give nearly the same direction for every image, which makes
    # the plain cosine close to 1 whatever the precision: the cosine after removing the
    # float32 mean vector compares what differs between images.
    centred = _cosine(*(x - both[0].mean(0) for x in both))
    for precision, emb in X.items():
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        clf.fit(emb["train"].X, emb["train"].y)
        out[f"accuracy_{precision}"] = round(float(clf.score(emb["test"].X, emb["test"].y)), 4)
    out.update(
        n_train=len(f32["train"]),
        n_test=len(f32["test"]),
        cosine_mean=round(float(cos.mean()), 5),
        cosine_min=round(float(cos.min()), 5),
        centred_cosine_mean=round(float(centred.mean()), 5),
        accuracy_change=round(out["accuracy_bfloat16"] - out["accuracy_float32"], 4),
    )
    return out


# -- decoder fidelity -------------------------------------------------------------------------


def decoder_fidelity(dataset: Path) -> dict:
    """Mean cosine of "fast" to "pillow" vectors and logreg accuracy of each decoder, by
    5-fold stratified CV over every image (the same folds for both), and train -> test
    where the folder has those splits."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from featx import Extractor

    split = (dataset / "train").is_dir() and (dataset / "test").is_dir()
    parts = (
        {n: dataset / n for n in ("train", "validation", "test") if (dataset / n).is_dir()}
        if split
        else {"all": dataset}
    )
    X: dict[str, dict] = {}
    for decoder in ("fast", "pillow"):
        ex = Extractor(
            "MobileNetV2",
            weights=str(MOBILENET_WEIGHTS),
            input_size=160,
            cache_dir=None,
            decoder=decoder,
            verbose=False,
        )
        X[decoder] = {name: ex.extract(str(folder)) for name, folder in parts.items()}
    fast = np.concatenate([e.X for e in X["fast"].values()])
    pillow = np.concatenate([e.X for e in X["pillow"].values()])
    cos = _cosine(fast, pillow)
    out: dict[str, Any] = {
        "dataset": dataset.name,
        "n_images": len(fast),
        "cosine_mean": round(float(cos.mean()), 5),
        "cosine_min": round(float(cos.min()), 5),
    }

    def logreg():
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))

    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    for decoder, emb in X.items():
        x = np.concatenate([e.X for e in emb.values()])
        y = np.concatenate([e.y for e in emb.values()])
        out[f"cv_{decoder}"] = round(float(cross_val_score(logreg(), x, y, cv=folds).mean()), 4)
        if split:
            clf = logreg().fit(emb["train"].X, emb["train"].y)
            out[f"test_{decoder}"] = round(float(clf.score(emb["test"].X, emb["test"].y)), 4)
    out["cv_change"] = round(out["cv_fast"] - out["cv_pillow"], 4)
    if split:
        out["test_change"] = round(out["test_fast"] - out["test_pillow"], 4)
        out["n_test"] = len(X["fast"]["test"])
    return out


def format_decoder_fidelity(rows: list[dict]) -> str:
    lines = [
        "| dataset (MobileNetV2 @ 160, shared weights) | N | mean cosine (min) | protocol | "
        "logreg acc pillow | fast | change |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for f in rows:
        lines.append(
            f"| {f['dataset']} | {f['n_images']} | {f['cosine_mean']:.4f} ({f['cosine_min']:.4f}) "
            f"| 5-fold stratified CV, all images | {f['cv_pillow']:.4f} | {f['cv_fast']:.4f} | "
            f"{f['cv_change']:+.4f} |"
        )
        if "test_change" in f:
            lines.append(
                f"| | | | train -> test ({f['n_test']} images) | {f['test_pillow']:.4f} | "
                f"{f['test_fast']:.4f} | {f['test_change']:+.4f} |"
            )
    met = all(
        f["cosine_mean"] >= DECODER_COSINE and abs(f["cv_change"]) <= DECODER_ACCURACY for f in rows
    )
    lines += [
        "",
        f"targets (accuracy by CV): mean cosine >= {DECODER_COSINE}, |accuracy change| <= "
        f"{DECODER_ACCURACY}: {'met' if met else 'NOT met'}",
    ]
    return "\n".join(lines)


# -- streaming: peak RSS over 1,000 vs 10,000 images ----------------------------------------


def make_images(into: Path, n: int) -> Path:
    """``n`` JPEGs re-encoded from crops and flips of clothing10/train, class folders kept."""
    from PIL import Image, ImageOps

    sources = image_paths(CLOTHING10 / "train", None)
    rng = np.random.default_rng(0)
    for i in range(n):
        src = Path(sources[i % len(sources)])
        with Image.open(src) as img:
            img = img.convert("RGB")
            w, h = img.size
            cw, ch = int(w * rng.uniform(0.7, 1.0)), int(h * rng.uniform(0.7, 1.0))
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            img = img.crop((left, top, left + cw, top + ch))
            if i // len(sources) % 2:
                img = ImageOps.mirror(img)
            target = into / src.parent.name / f"{i:05d}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            img.save(target, quality=90)
    return into


def rss_check(args) -> dict:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="featx-rss-") as tmp:
        print("  making 10,000 images ...", file=sys.stderr, flush=True)
        big = make_images(Path(tmp) / "10000", 10_000)
        paths = image_paths(big, None)
        for mode, n in (
            ("featx-cold", 1_000),
            ("featx-cold", 10_000),
            ("tutorial", 1_000),
            ("tutorial", args.rss_tutorial_n),
        ):
            folder = (
                big if n == len(paths) else subset_folder(big, paths[:n], Path(tmp) / f"{mode}-{n}")
            )
            print(f"  rss: {mode} over {n} ...", file=sys.stderr, flush=True)
            r = run_worker(mode, folder, "MobileNetV2", 160, args.batch_size, Path(tmp) / f"c{n}")
            out[f"{mode} {n}"] = r
    return out


# -- main -----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import tensorflow as tf

    model = "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
        flags = Path("/proc/cpuinfo").read_text()
        bf16 = "avx512_bf16" in flags
    except OSError:
        bf16 = False
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": model,
        "cpus": os.cpu_count(),
        "avx512_bf16": bf16,
        "tensorflow": tf.__version__,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=CLOTHING10 / "train")
    p.add_argument("--configs", default=DEFAULT_CONFIGS, help="BACKBONE@SIZE,... or none")
    p.add_argument("--modes", default=",".join(MODES), help=f"subset of {','.join(MODES)}")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeat", type=int, default=2, help="timed passes per mode; the fastest")
    p.add_argument("--tf-threads", default=None, help="INTRA,INTER for every mode (default: TF's)")
    p.add_argument("--limit", type=int, default=None, help="N images (MobileNetV2; default all)")
    p.add_argument(
        "--resnet-limit", type=int, default=320, help="N images (ResNet50, hub:dinov2_small)"
    )
    p.add_argument("--fidelity", action="store_true", help="bfloat16 vs float32 fidelity")
    p.add_argument("--fidelity-resnet-train", type=int, default=800)
    p.add_argument(
        "--decoder-fidelity", action="store_true", help="fast vs pillow decoder fidelity"
    )
    p.add_argument("--rss", action="store_true", help="peak RSS over 1,000 vs 10,000 images")
    p.add_argument("--rss-tutorial-n", type=int, default=4_000)
    p.add_argument("--json", type=Path, default=None, help="also write everything here")
    # A worker process: one mode, one folder; prints "RESULT {json}".
    p.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--backbone", default="MobileNetV2", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=160, help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.worker:
        mode = args.worker.removesuffix("-again")
        args.worker = mode
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return 0
    args.modes = [m for m in args.modes.split(",") if m]
    report: dict[str, Any] = {"machine": machine(), "batch_size": args.batch_size, "configs": []}
    print(json.dumps(report["machine"]))
    for config in [] if args.configs == "none" else args.configs.split(","):
        backbone, size = config.split("@")
        heavy = backbone.startswith(("ResNet", "hub:"))  # 4-5 GFLOPs an image at 224 px
        limit = args.resnet_limit if heavy else args.limit
        result = measure_config(backbone, int(size), args.data, limit, args)
        report["configs"].append(result)
        print("\n" + format_config(result), flush=True)
    if args.fidelity:
        print("  fidelity ...", file=sys.stderr, flush=True)
        report["fidelity"] = [
            fidelity("MobileNetV2", 160, MOBILENET_WEIGHTS, None),
            fidelity("ResNet50", 224, None, args.fidelity_resnet_train),
        ]
        print("\n" + format_fidelity(report["fidelity"]), flush=True)
    if args.decoder_fidelity:
        print("  decoder fidelity ...", file=sys.stderr, flush=True)
        report["decoder_fidelity"] = [decoder_fidelity(d) for d in (CLOTHING10, INTEL6)]
        print("\n" + format_decoder_fidelity(report["decoder_fidelity"]), flush=True)
    if args.rss:
        report["rss"] = rss_check(args)
        print("\n" + format_rss(report["rss"]), flush=True)
    report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"\nload average at the end: {report['machine']['loadavg_end']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
