"""``featx demo``: the first thing a new user runs, and the story featx tells.

Online (a user's machine), the transfer-learning course's own task:

1. **Data**: Keras' ``flower_photos`` (about 3,700 photos of 5 flowers, the archive that
   ``keras.utils.get_file`` fetches in Keras' transfer-learning tutorials) and ImageNet
   MobileNetV2 weights, each downloaded once into Keras' cache, its size announced and
   a progress bar shown.
2. **Extract**: the embeddings of every photo, cached; the same again, from the cache.
3. **Learn**: logistic regression, an RBF SVM and a small MLP on the embeddings, against
   two baselines, raw pixels and the same network with random weights, by an honest
   protocol (a seeded, stratified 60/20/20 split: each head's parameters chosen on
   validation, one score on test), beside the course's own figures.
4. **See, audit, ship**: the report page, the photos whose label looks wrong, and a
   logistic-regression classifier exported as one Keras model.

Offline (an air-gapped machine; these machines): one line says so, and the same story
runs on what is there: ``featx demo --data DIR --weights PATH`` on your own photos and
weights file, or, with nothing given, scikit-learn's bundled digits with random weights,
said plainly to be no test of pretraining. Nothing is downloaded to find out: a quick
request (a few seconds at most) tells whether the archive can be reached.

The archive's and the weights' URLs are parameters (``--data-url``, ``--weights-url``),
for mirrors and for tests, which serve a tiny archive of the same layout from a
``file://`` URL.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from featx.backbones import WeightsUnavailableError

__all__ = [
    "COURSE_FIGURES",
    "FLOWERS_URL",
    "MOBILENET_V2_URL",
    "fetch",
    "run_demo",
    "write_digits",
]

#: The 5-class flower photos of Keras' and TensorFlow's transfer-learning tutorials.
FLOWERS_URL = (
    "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"
)
#: Keras' own ImageNet MobileNetV2 weights (alpha 1.0, no top), one file per input size:
#: the files ``keras.applications.MobileNetV2(weights="imagenet")`` downloads.
MOBILENET_V2_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
    "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{size}_no_top.h5"
)
_IMAGENET_SIZES = (96, 128, 160, 192, 224)
#: The course's test accuracies on flower_photos (TensorFlow's image classification and
#: transfer-learning tutorials; their protocol: an 80/20 split, scored on the 20%).
COURSE_FIGURES = (
    ("a CNN trained from scratch", 0.687),
    ("the same CNN with augmentation and dropout", 0.752),
    ("a frozen MobileNet with a trained dense head", 0.875),
)
PHOTO_SIZE = 160
DIGITS_SIZE = 96
HEADS = ("logreg", "svm", "mlp")
# A compact search keeps the first run to a few minutes on a laptop; `featx evaluate`
# and `featx compare` search the heads' full default grids.
DEMO_GRIDS = {
    "logreg": {"clf__C": [0.01, 0.1, 1.0]},
    "svm": {"clf__estimator__C": [1.0, 10.0]},
    "linear-svm": {"clf__estimator__C": [0.01, 0.1]},
    "mlp": {"clf__alpha": [1e-4, 1e-2]},
}
# A margin this large (accuracy) is "a wide margin" in the conclusion.
_WIDE = 0.10
_PROBE_SECONDS = 5.0
_RAW = "raw pixels 16x16"


class UnreachableError(OSError):
    """A download that cannot be made: no network, or the URL does not answer."""


def run_demo(
    data: str | os.PathLike | None = None,
    *,
    backbone: str = "MobileNetV2",
    weights: str | os.PathLike | None = "imagenet",
    input_size: int | tuple[int, int] | None = None,
    cache_dir: str | os.PathLike | None = "auto",
    heads: tuple[str, ...] = HEADS,
    method: str = "umap",
    verbose: bool = True,
    log: Callable[[str], Any] = print,
    data_url: str = FLOWERS_URL,
    weights_url: str | None = None,
    keras_cache_dir: str | os.PathLike | None = None,
    **extractor_params: Any,
) -> dict[str, Any]:
    """Tell featx's story on photos (or say plainly why not); return what it printed.

    Parameters
    ----------
    data : path, optional
        Your photos: a class-per-folder directory (split 60/20/20 here, seeded and
        stratified) or a root with ``train/``, ``validation/`` and ``test/``. Default:
        the flower photos, downloaded once; offline, scikit-learn's digits.
    weights : "imagenet", None or path
        ``"imagenet"``: for MobileNetV2, Keras' weights file from ``weights_url``
        (downloaded once into Keras' cache); for other backbones, Keras' own download.
    data_url, weights_url : str
        Where the flower archive and the MobileNetV2 weights come from (default: Keras'
        URLs, ``weights_url`` for the input size). ``file://`` URLs work.
    keras_cache_dir : path, optional
        Keras' cache folder (default ``$KERAS_HOME`` or ``~/.keras``); downloads go to
        its ``datasets/`` and ``models/``.

    Returns
    -------
    dict
        ``data``, ``offline`` (why nothing was downloaded, or None), ``rows`` (the
        comparison), ``best``, ``conclusion``, ``extract`` (the cold and warm runs),
        ``report``, and on photos ``course``, ``audit`` and ``export``; ``summary``.
    """
    from featx.cache import resolve_cache_dir

    cache_root = resolve_cache_dir(cache_dir) or Path("cache")
    result: dict[str, Any] = {"offline": None}
    photos, flowers = data is not None, False
    if data is None:
        try:
            data = fetch(data_url, keras_cache_dir=keras_cache_dir, what="the flower photos",
                         extract=True, log=log)  # fmt: skip
            photos = flowers = True
        except UnreachableError as exc:
            result["offline"] = str(exc)
            log(
                f"featx demo: offline ({exc}), so no flower photos or ImageNet weights: "
                "running on scikit-learn's digits instead."
            )
            data = write_digits(cache_root / "demo-digits")
    if photos:
        input_size = input_size or PHOTO_SIZE
        splits, data_name = _photo_splits(Path(data), flowers)
    else:
        from featx.splits import resolve_splits

        input_size = input_size or DIGITS_SIZE
        splits = resolve_splits(data)
        data_name = "scikit-learn's digits (1,797 8x8 images, 10 classes, 60/20/20 split)"
    result["data"] = data_name
    log(f"featx demo: {data_name}")

    run = {"batch_size": extractor_params.pop("batch_size", 32), "cache_dir": cache_dir,
           "verbose": verbose}  # fmt: skip
    network = {"backbone": backbone, "input_size": input_size, **extractor_params}
    pretrained = _pretrained(
        network, weights, weights_url, keras_cache_dir, offline=result["offline"], log=log
    )
    represented, first = _extract(splits, network, pretrained, run, result, log)
    result["pretrained"] = first  # its label, or None where no pretrained network ran

    # Learn and see on the embeddings just made: nothing below extracts again.
    from featx.evaluation import compare_embedded

    comparison = compare_embedded(
        represented, heads=heads, grids={h: DEMO_GRIDS[h] for h in heads if h in DEMO_GRIDS}
    )
    table = comparison.table
    log("")
    log(comparison.text())
    rows = table.to_dict(orient="records")
    kept = ("backbone", "head", "accuracy", "balanced_accuracy", "macro_f1", "ms_per_image",
            "dim", "chosen_params")  # fmt: skip
    result["rows"] = [{k: row[k] for k in kept} for row in rows]
    best = max(rows, key=lambda row: row["accuracy"])
    result["best"] = {k: best[k] for k in ("backbone", "head", "accuracy")}
    if flowers:
        result["course"] = _beside_the_course(_best_of(rows, first) if first else best, log)
    result["conclusion"] = _conclusion(rows, first, photos)
    log("")
    log(f"conclusion: {result['conclusion']}")

    if photos and first is not None:
        result["audit"] = _audit(represented[first], cache_dir, cache_root, log)
        result["export"] = _export(splits, rows, first, pretrained, cache_dir, cache_root, log)

    from featx.reporting import report

    pages = report(
        embeddings=represented,
        comparison=comparison,  # with its predictions: the page's confusion matrix and errors
        method=method,
        out=cache_root / "demo-report.html",
        png=cache_root / "demo-report.png",
        title=f"featx demo: {data_name}",
        cache_dir=cache_dir,
    )
    result["report"] = {"html": str(pages["out"]), "png": str(pages["png"]),
                        "panels": [{"label": p["label"], **{k: p["metrics"][k] for k in (
                            "knn_accuracy", "silhouette", "trustworthiness")}}
                                   for p in pages["panels"]]}  # fmt: skip
    for panel in result["report"]["panels"]:
        log(
            f"  {panel['label'][:44]:<44} k-NN {panel['knn_accuracy']:.3f}  "
            f"silhouette {panel['silhouette']:.3f}"
        )
    log(f"report: {pages['out']} (figure: {pages['png']})")
    result["summary"] = f"{result['conclusion']} Report: {pages['out']}"
    return result


# -- downloads, through Keras' cache --------------------------------------------------------------


def fetch(
    url: str,
    *,
    keras_cache_dir: str | os.PathLike | None = None,
    what: str = "the file",
    extract: bool = False,
    log: Callable[[str], Any] = print,
    timeout: float = _PROBE_SECONDS,
) -> Path:
    """The local copy of ``url`` in Keras' cache: downloaded once, with its size said and
    Keras' progress bar; an archive is extracted (its top folder is returned).

    Raises
    ------
    UnreachableError
        Within ``timeout`` seconds, when ``url`` cannot be reached (no network, a DNS or
        HTTP error, a missing ``file://`` path) and there is no copy in the cache.
    """
    home = _keras_home(keras_cache_dir)
    name = Path(urllib.parse.urlsplit(url).path).name
    if extract:
        stem = name.split(".")[0]  # Keras' folder for the archive "stem.tgz"
        local = home / "datasets" / stem
        found = local / stem if (local / stem).is_dir() else local
        if found.is_dir():
            return found
    else:
        local = home / "models" / name
        if local.is_file():
            return local
    size = _probe(url, timeout)
    where = str(local.parent).replace(str(Path.home()), "~", 1)
    amount = f"{size / 1e6:,.1f} MB" if size is not None else "size unknown"
    log(f"  downloading {what} ({amount}) from {url} into {where}")
    import keras

    # Keras writes to /tmp/.keras when the folder is not there yet (not writable, it says).
    home.mkdir(parents=True, exist_ok=True)
    try:
        path = keras.utils.get_file(
            stem if extract else name,
            origin=url,
            extract=extract,
            cache_subdir="datasets" if extract else "models",
            cache_dir=str(home),
        )
    except Exception as exc:  # Keras raises a bare Exception for a failed download
        raise UnreachableError(f"the download of {url} failed: {exc}") from exc
    path = Path(path)
    if extract:
        return path / stem if (path / stem).is_dir() else path
    return path


def _keras_home(keras_cache_dir: str | os.PathLike | None) -> Path:
    """Keras' cache folder, as ``keras.utils.get_file`` finds it."""
    if keras_cache_dir is not None:
        return Path(keras_cache_dir).expanduser()
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser()


def _probe(url: str, timeout: float) -> int | None:
    """The size ``url`` announces (None if it does not say); :class:`UnreachableError` within
    ``timeout`` seconds otherwise. A thread bounds the wait, since name resolution
    ignores socket timeouts."""
    answer: dict[str, Any] = {}

    def ask() -> None:
        try:
            request = urllib.request.Request(url, method="HEAD")
            with urllib.request.urlopen(request, timeout=timeout) as response:
                answer["size"] = response.headers.get("Content-Length")
        except Exception as exc:  # whatever failed, the file cannot be had from here
            answer["error"] = exc

    thread = threading.Thread(target=ask, name="featx-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    host = urllib.parse.urlsplit(url).hostname or url
    if thread.is_alive():
        raise UnreachableError(f"{host} did not answer within {timeout:.0f} s")
    if "error" in answer:
        error = answer["error"]
        reason = getattr(error, "reason", None) or error
        raise UnreachableError(f"cannot reach {host}: {reason}")
    size = answer.get("size")
    return int(size) if size and str(size).isdigit() else None


# -- the data --------------------------------------------------------------------------------------


def write_digits(root: str | os.PathLike) -> Path:
    """Write scikit-learn's 1,797 digits as PNGs in ``root/{train,validation,test}/<digit>/``.

    A stratified 60/20/20 split, seeded; files already there are left as they are.
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    root = Path(root)
    if (root / "test").is_dir():
        return root
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    tmp = root.with_name(root.name + ".partial")
    for split, rows in _split_rows(digits.target).items():
        for i in rows:
            folder = tmp / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i], "L").save(folder / f"{i:04d}.png")
    os.replace(tmp, root)
    return root


def _split_rows(y: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """A stratified, seeded 60/20/20 split of the rows of ``y``."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(y))
    train, rest = train_test_split(index, test_size=0.4, stratify=y, random_state=seed)
    validation, test = train_test_split(rest, test_size=0.5, stratify=y[rest], random_state=seed)
    return {"train": train, "validation": validation, "test": test}


def _photo_splits(root: Path, flowers: bool) -> tuple[Any, str]:
    """The splits of a dataset root, or a seeded 60/20/20 split of one photo folder (as
    tables of path and label); and how the demo names the data."""
    import pandas as pd

    from featx.sources import resolve_source
    from featx.splits import Splits, split_layout

    layout = split_layout(root)
    name = "flower_photos, the course's task" if flowers else str(root)
    if layout is not None:
        counts = {s: len(resolve_source(p)) for s, p in layout.sources.items()}
        classes = resolve_source(layout.sources["train"]).classes
        split = "/".join(f"{n:,}" for n in counts.values())
        text = f"{name} ({sum(counts.values()):,} photos, {len(classes)} classes, {split} split)"
        return layout, text
    images = resolve_source(root)
    if images.y is None or images.classes is None:
        raise ValueError(
            f"featx demo --data {root}: expected class subfolders (root/<class>/<image>) or a "
            "root with train/, validation/ and test/."
        )
    names = np.asarray(images.classes, dtype=object)[images.y]
    tables = {
        split: pd.DataFrame(
            {"path": [images.inputs[i] for i in np.sort(rows)], "label": names[np.sort(rows)]}
        )
        for split, rows in _split_rows(images.y).items()
    }
    text = (
        f"{name} ({len(images):,} photos, {len(images.classes)} classes: "
        f"{', '.join(images.classes)}; a seeded 60/20/20 split)"
    )
    return Splits("train-validation-test", tables), text


# -- the representations ---------------------------------------------------------------------------


def _pretrained(network, weights, weights_url, keras_cache_dir, *, offline, log):
    """The pretrained representation's config, or None (said in one line) where its
    weights cannot be had: ImageNet MobileNetV2 from Keras' cache or ``weights_url``."""
    from featx.config import BackboneConfig

    backbone = network["backbone"]
    if weights is None:
        return None
    if weights != "imagenet":
        # The file's name without its extensions: a path would widen every table.
        name = Path(weights).name.split(".weights.")[0].removesuffix(".h5")
        return BackboneConfig.of({**network, "weights": weights,
                                  "label": f"{backbone} ({name})"})  # fmt: skip
    label = f"{backbone} (imagenet)"
    size = network["input_size"]
    if backbone == "MobileNetV2" and (weights_url or size in _IMAGENET_SIZES):
        url = weights_url or MOBILENET_V2_URL.format(size=size)
        try:
            path = fetch(url, keras_cache_dir=keras_cache_dir, what="ImageNet MobileNetV2",
                         log=log)  # fmt: skip
        except UnreachableError as exc:
            if offline is None:  # else the offline line has said it
                log(f"featx demo: no ImageNet weights ({exc}): pass --weights PATH.")
            return None
        return BackboneConfig.of({**network, "weights": str(path), "label": label})
    if offline is not None:
        return None
    # Another family: Keras downloads its weights itself when the network is built.
    return BackboneConfig.of({**network, "weights": "imagenet", "label": label})


def _extract(splits, network, pretrained, run, result, log):
    """Every representation's embeddings: the network's first, cold then warm (the
    cache at work), then the baselines. Returns them by label, and the pretrained
    representation's label (None where it could not be built)."""
    from featx.backbones import RawPixels
    from featx.config import BackboneConfig
    from featx.evaluation import embed_splits

    random = BackboneConfig.of({**network, "weights": None,
                                "label": f"{network['backbone']} (random weights)"})  # fmt: skip
    order = [c for c in (pretrained, random) if c is not None]
    represented: dict[str, Any] = {}
    first = None
    for config in order:
        try:
            cold = embed_splits(splits, config, **run)
        except WeightsUnavailableError as exc:
            log(f"featx demo: no ImageNet weights ({exc.__cause__ or exc}): pass --weights PATH.")
            continue
        if not represented:
            warm = embed_splits(splits, config, **run)  # the same images: all from the cache
            _log_cache(config.name, cold.combined(), warm.combined(), run, result, log)
            cold = warm
        represented[config.name] = cold
        if config is pretrained:
            first = config.name
    represented[_RAW] = embed_splits(splits, BackboneConfig(RawPixels(16), label=_RAW), **run)
    return represented, first


def _log_cache(label, first, again, run, result, log) -> None:
    from featx.cache import resolve_cache_dir

    where = resolve_cache_dir(run["cache_dir"])
    log(
        f"extract {label}: {len(first):,} images -> {first.dim}-d in {first.seconds:.2f} s "
        f"({first.cache_misses:,} computed, {first.cache_hits:,} from the cache)"
    )
    log(
        f"again, the same images: {again.seconds:.2f} s ({again.cache_misses:,} computed, "
        f"{again.cache_hits:,} from the cache at {where or 'nowhere: --cache-dir none'})"
    )
    keys = ("seconds", "images_per_second", "cache_misses", "cache_hits")
    result["extract"] = {
        "label": label,
        "cold": {k: first.summary()[k] for k in keys},
        "warm": {k: again.summary()[k] for k in keys},
        "n_images": len(first),
        "dim": first.dim,
    }


# -- what it means -------------------------------------------------------------------------------


def _best_of(rows: list[dict[str, Any]], label: str) -> dict[str, Any] | None:
    mine = [row for row in rows if row["backbone"] == label]
    return max(mine, key=lambda row: row["accuracy"]) if mine else None


def _conclusion(rows: list[dict[str, Any]], pretrained: str | None, photos: bool) -> str:
    """One true sentence from the table: does pretraining win, and by how much."""
    random = next((r["backbone"] for r in rows if r["backbone"].endswith("(random weights)")),
                  None)  # fmt: skip
    raw, noise = _best_of(rows, _RAW), _best_of(rows, random) if random else None
    if pretrained is None:
        best = max(rows, key=lambda row: row["accuracy"])
        text = f"no pretrained network ran: best {best['backbone']} + {best['head']} "
        text += f"{best['accuracy']:.3f}"
        if raw is not None and noise is not None:
            relation = "as well as or better than" if raw["accuracy"] >= noise["accuracy"] else (
                "a little worse than")  # fmt: skip
            text += (
                f"; raw pixels ({raw['accuracy']:.3f}) do {relation} the random-weight "
                f"network ({noise['accuracy']:.3f})"
            )
        if photos:
            return text + ". Pass --weights PATH (or run online) to see what pretraining adds."
        return (
            f"{text}. Digits are not photos: this shows what featx does, not what pretraining "
            f"is worth. Pretraining shows on photos: run {_photo_command()}"
        )
    won = _best_of(rows, pretrained)
    baselines = [b for b in (noise, raw) if b is not None]
    against = " and ".join(
        f"{b['accuracy']:.3f} {'with random weights' if b is noise else 'on raw pixels'}"
        for b in baselines
    )
    margin = won["accuracy"] - max(b["accuracy"] for b in baselines)
    mine = f"{won['backbone']} + {won['head']} {won['accuracy']:.3f}"
    if margin >= _WIDE:
        return f"pretrained features win by a wide margin: {mine} against {against}."
    if margin > 0:
        return f"pretrained features win, narrowly: {mine} against {against}."
    text = f"pretrained features do not beat the baselines here: {mine} against {against}."
    if not photos:
        text += f" Digits are not photos. Pretraining shows on photos: run {_photo_command()}"
    return text


def _photo_command() -> str:
    """How to see pretraining at work from here: the shared photos and weights where they
    are beside this checkout, else any photos and weights file."""
    shared = Path(os.environ.get("FEATX_SHARED", "../shared"))
    data = shared / "datasets" / "intel6"
    weights = shared / "weights" / "mobilenet_v2_1.0_160_no_top.weights.h5"
    if data.is_dir() and weights.is_file():
        return f"featx demo --data {data} --weights {weights}"
    return "featx demo with network access, or featx demo --data PHOTOS --weights FILE.h5"


def _beside_the_course(best: dict[str, Any], log) -> list[dict[str, Any]]:
    figures = [{"what": what, "accuracy": accuracy, "source": "course"}
               for what, accuracy in COURSE_FIGURES]  # fmt: skip
    figures.append({"what": f"featx: {best['backbone']} + {best['head']}, no network trained",
                    "accuracy": best["accuracy"], "source": "featx"})  # fmt: skip
    log("")
    log("beside the course's own figures on these photos (its protocol: an 80/20 split):")
    for figure in figures:
        log(f"  {figure['what']:<62} {figure['accuracy']:.3f}")
    return figures


def _audit(embedded, cache_dir, cache_root: Path, log) -> dict[str, Any]:
    """featx audit on the pretrained embeddings: the photos whose label looks wrong."""
    from featx.audit_page import write_audit_html
    from featx.auditing import audit_embedded

    found = audit_embedded(embedded, heads=["logreg"], search=False, cache_dir=cache_dir)
    page = write_audit_html(found, cache_root / "demo-audit.html", title="featx demo: audit")
    summary = found.summary()
    counts = summary["counts"]
    log("")
    log(
        f"audit: {counts['label_issues']} of {counts['images']:,} images look mislabelled, "
        f"{counts['duplicate_groups']} duplicate groups ({counts['leaks']} across splits), "
        f"{counts['outliers']} outliers; page: {page}"
    )
    for issue in summary["label_issues"][:5]:
        log(
            f"  {issue['path']}: given {issue['given']}, looks like {issue['suggested']} "
            f"({issue['score']:.3f})"
        )
    return {"counts": counts, "label_issues": summary["label_issues"][:5], "page": str(page)}


def _export(splits, rows, pretrained, config, cache_dir, cache_root: Path, log):
    """The logistic regression on the pretrained embeddings, exported as one Keras model."""
    import pandas as pd

    from featx.classifier import train_classifier
    from featx.exporting import export

    chosen = next(
        (json.loads(r["chosen_params"]) for r in rows
         if r["backbone"] == pretrained and r["head"] == "logreg"), {"clf__C": 1.0},
    )  # fmt: skip
    sources = [splits.sources[s] for s in ("train", "validation") if s in splits.sources]
    if all(isinstance(s, pd.DataFrame) for s in sources):
        training = pd.concat(sources, ignore_index=True)
    else:  # a dataset root's folders
        from featx.sources import resolve_source

        parts = [resolve_source(s) for s in sources]
        training = pd.concat([pd.DataFrame({"path": p.inputs, "label": np.asarray(
            p.classes, dtype=object)[p.y]}) for p in parts], ignore_index=True)  # fmt: skip
    member = config.members()[0]
    trained = train_classifier(
        training, head="logreg", grid={k: [v] for k, v in chosen.items()},
        backbone=member.backbone[0], weights=member.weights, input_size=member.input_size[0],
        cache_dir=cache_dir, verbose=False,
    )  # fmt: skip
    written = export(trained.model, cache_root / "demo-classifier.keras")
    height, width = written["input_size"]
    log(
        f"export: {written['path']} ({written['bytes'] / 1e6:.1f} MB; uint8 {height}x{width} "
        f"RGB in, {len(written['classes'])} class probabilities out; classes in "
        f"{Path(written['metadata']).name}; keras.models.load_model reads it)"
    )
    return {k: written[k] for k in ("path", "bytes", "classes", "input_size", "metadata")}
