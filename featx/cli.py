"""The ``featx`` command: each subcommand parses its arguments and calls one public function."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any

__all__ = ["main"]


def _weights(value: str) -> str | None:
    return None if value.lower() == "none" else value


def _size(value: str) -> int | tuple[int, int]:
    parts = value.lower().replace(",", "x").split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size {value!r}: expected N or HxW") from None
    if len(sizes) == 1:
        return sizes[0]
    if len(sizes) == 2:
        return sizes[0], sizes[1]
    raise argparse.ArgumentTypeError(f"--size {value!r}: expected N or HxW")


def _cache_dir(value: str) -> str | None:
    return None if value.lower() == "none" else value


_HEADS = ("logreg", "svm", "linear-svm", "mlp")


def _param(value: str) -> tuple[str, Any]:
    key, sep, raw = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--param {value!r}: expected KEY=VALUE, e.g. C=10")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def _add_head_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--head", default="logreg", choices=_HEADS)
    p.add_argument("--param", type=_param, action="append", default=[],
                   help="a head parameter KEY=VALUE (repeatable), e.g. --param C=10")


def _add_backbone_options(p: argparse.ArgumentParser, default_weights: str | None) -> None:
    p.add_argument("--backbone", default="MobileNetV2", help="registry name, or a .keras/.h5 file")
    p.add_argument(
        "--weights",
        type=_weights,
        default=default_weights,
        help="imagenet | none (seeded random init) | PATH to a weights file",
    )
    p.add_argument("--size", type=_size, default=None, help="input size N or HxW")
    p.add_argument("--pooling", choices=("avg", "max"), default="avg")
    p.add_argument("--layer", default=None, help="embed this layer instead of the last block")
    p.add_argument("--resize", choices=("stretch", "center_crop"), default="stretch")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="seed of --weights none")
    p.add_argument(
        "--cache-dir",
        type=_cache_dir,
        default="auto",
        help="cache folder (default $FEATX_CACHE_DIR or ./cache); none disables it",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="featx", description="Frozen pretrained Keras CNNs as cached feature extractors."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("extract", help="embed a folder or list of images into the cache")
    p.add_argument("source", help="a class-per-folder directory or an image file")
    _add_backbone_options(p, default_weights="imagenet")
    p.add_argument("--out", default=None, help="also write the embeddings to FILE.npz")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise")
    p.add_argument(
        "--precision",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="compute precision: bfloat16 for CPUs with AVX512-BF16, float16 for GPUs",
    )

    p = sub.add_parser("train", help="fit an image classifier on a class-per-folder directory")
    p.add_argument("source", help="a class-per-folder directory")
    p.add_argument("--out", required=True, help="where to write the classifier file")
    _add_head_options(p)
    _add_backbone_options(p, default_weights="imagenet")

    p = sub.add_parser("predict", help="top-k classes of images with a saved classifier")
    p.add_argument("model", help="a file written by `featx train` (only from trusted sources)")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--top", type=int, default=3)
    p.add_argument("--json", action="store_true")

    for name, help_text in [("evaluate", "fit and score a head under an honest protocol"),
                            ("compare", "score several backbones x heads, with baselines")]:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("source", nargs="?", default=None,
                       help="a root with train/ validation/ test/, or one class-per-folder "
                       "directory (cross-validated)")
        p.add_argument("--train", default=None, help="explicit training source")
        p.add_argument("--validation", default=None, help="explicit validation source")
        p.add_argument("--test", default=None, help="explicit test source")
        p.add_argument("--cv", type=int, default=5, help="folds for a single folder")
        _add_backbone_options(p, default_weights="imagenet")
        if name == "evaluate":
            p.add_argument("--head", default="logreg", choices=_HEADS)
        else:
            p.add_argument("--backbones", default=None,
                           help="comma-separated registry names (default: --backbone)")
            p.add_argument("--heads", default="logreg",
                           help=f"comma-separated, from {', '.join(_HEADS)}")
            p.add_argument("--no-baselines", action="store_true",
                           help="leave out the raw-pixel and random-weight baselines")
            p.add_argument("--csv", default=None, help="also write the table to FILE.csv")

    p = sub.add_parser("backbones", help="list the registry")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("cache", help="show, check or clear the embedding cache")
    p.add_argument("action", choices=("info", "verify", "clear"))
    p.add_argument("--cache-dir", default="auto")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("demo", help="the first thing to run: extract, cache and classify")
    p.add_argument("--data", default=None,
                   help="a root with train/ validation/ test/, or a class-per-folder directory "
                   "(default: scikit-learn's digits)")
    p.add_argument("--heads", default="logreg,svm,mlp", help="comma-separated heads to compare")
    _add_backbone_options(p, default_weights="imagenet")
    return parser


Result = tuple[dict[str, Any], str]


def _extract(args: argparse.Namespace) -> Result:
    from featx.extract import Extractor

    extractor = Extractor(
        args.backbone,
        weights=args.weights,
        input_size=args.size,
        pooling=args.pooling,
        layer=args.layer,
        resize=args.resize,
        batch_size=args.batch_size,
        cache_dir=args.cache_dir,
        seed=args.seed,
        precision=args.precision,
        on_error=args.on_error,
        verbose=not args.quiet,
    )
    embeddings = extractor.extract(args.source)
    if args.out:
        embeddings.save(args.out)
    summary = embeddings.summary()
    summary["out"] = args.out
    lines = [
        f"{summary['n_images']} images -> {summary['dim']}-d embeddings in "
        f"{summary['seconds']:.2f} s ({summary['images_per_second']} images/s)",
        f"cache: {summary['cache_hits']} hits, {summary['cache_misses']} computed "
        f"({extractor.cache.location or 'disabled'})",
    ]
    lines += [f"failed: {f['input']}: {f['reason']}" for f in summary["failed"]]
    if args.out:
        lines.append(f"wrote {args.out}")
    return summary, "\n".join(lines)


def _extractor_params(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "weights": args.weights, "input_size": args.size, "pooling": args.pooling,
        "layer": args.layer, "resize": args.resize, "batch_size": args.batch_size,
        "cache_dir": args.cache_dir, "seed": args.seed, "verbose": not args.quiet,
    }


def _train(args: argparse.Namespace) -> Result:
    from featx.classifier import fit_classifier, save_classifier

    model = fit_classifier(args.source, head=args.head, head_params=dict(args.param),
                           backbone=args.backbone, **_extractor_params(args))
    save_classifier(model, args.out)
    size = os.path.getsize(args.out)
    result = {"out": args.out, "bytes": size, "classes": [str(c) for c in model.classes_],
              "head": args.head, "backbone": args.backbone}
    return result, f"wrote {args.out} ({size / 1e6:.2f} MB, {len(model.classes_)} classes)"


def _predict(args: argparse.Namespace) -> Result:
    from featx.classifier import load_classifier, predict_top_k

    model = load_classifier(args.model)
    tops = predict_top_k(model, args.images, k=args.top)
    rows = [{"image": image, "top": [{"class": c, "probability": round(p, 6)} for c, p in top]}
            for image, top in zip(args.images, tops, strict=True)]
    text = "\n".join(
        f"{row['image']}: " + ", ".join(f"{t['class']} {t['probability']:.3f}" for t in row["top"])
        for row in rows
    )
    return {"predictions": rows}, text


def _splits(args: argparse.Namespace) -> dict[str, Any]:
    return {"source": args.source, "train": args.train, "validation": args.validation,
            "test": args.test, "cv": args.cv}


def _evaluate(args: argparse.Namespace) -> Result:
    from featx.evaluate import evaluate

    result = evaluate(**_splits(args), backbone=args.backbone, head=args.head,
                      **_extractor_params(args))
    chosen = ", ".join(f"{k}={v}" for k, v in (result.get("chosen_params") or {}).items())
    text = (
        f"{result.get('protocol')}: accuracy {result['accuracy']:.4f}, balanced accuracy "
        f"{result['balanced_accuracy']:.4f}, macro F1 {result['macro_f1']:.4f}"
        + (f" (chosen {chosen})" if chosen else "")
    )
    return result, text


def _compare(args: argparse.Namespace) -> Result:
    from featx.evaluate import compare

    names = args.backbones.split(",") if args.backbones else [args.backbone]
    params = _extractor_params(args)
    layer = params.pop("layer")  # a per-backbone setting in compare's entries
    entries = [{"backbone": n.strip(), "layer": layer} if layer else n.strip()
               for n in names if n.strip()]
    table = compare(**_splits(args), backbones=entries,
                    heads=[h.strip() for h in args.heads.split(",") if h.strip()],
                    baselines=not args.no_baselines, **params)
    if args.csv:
        table.to_csv(args.csv, index=False)
    records = json.loads(table.to_json(orient="records"))
    return {"rows": records, "csv": args.csv}, table.to_string(index=False)


def _backbones(args: argparse.Namespace) -> Result:
    from featx.backbones import list_backbones

    rows = [
        {
            "name": s.name,
            "default_size": s.default_size,
            "min_size": s.min_size,
            "dim": s.dim,
            "preprocess": f"keras.applications.{s.module}.preprocess_input",
        }
        for s in list_backbones()
    ]
    text = "\n".join(
        [f"{'backbone':<20}{'size':>6}{'min':>6}{'dim':>7}  preprocessing"]
        + [
            f"{r['name']:<20}{r['default_size']:>6}{r['min_size']:>6}{r['dim']:>7}  "
            f"{r['preprocess']}"
            for r in rows
        ]
    )
    return {"backbones": rows}, text


def _cache(args: argparse.Namespace) -> Result:
    from featx.cache import EmbeddingCache, default_cache_dir

    cache = EmbeddingCache(default_cache_dir() if args.cache_dir == "auto" else args.cache_dir)
    if args.action == "clear":
        n = cache.clear()
        return (
            {"location": str(cache.location), "cleared": n},
            f"cleared {n} cached vectors from {cache.location}",
        )
    if args.action == "verify":
        report = cache.verify()
        status = "ok" if report["ok"] else "PROBLEMS: " + "; ".join(report["problems"])
        return report, f"{status} ({report['n_vectors']} vectors, {report['n_shards']} shards)"
    info = cache.info()
    lines = [
        f"cache at {info['location']}: {info['n_vectors']} vectors, {info['bytes'] / 1e6:.1f} MB"
    ]
    for entry in info["fingerprints"]:
        spec = entry["spec"].get("backbone", {})
        size = "x".join(map(str, spec.get("input_size") or []))
        lines.append(
            f"  {entry['fingerprint'][:12]}  {str(spec.get('architecture'))[:40]:<40} "
            f"{size:>9} {spec.get('pooling', '-')!s:<4} "
            f"{entry['n_vectors']:>8} x {entry['dim']}  weights {str(spec.get('weights'))[:40]}"
        )
    return info, "\n".join(lines)


def _demo(args: argparse.Namespace) -> Result:
    from featx.demo import run_demo

    result = run_demo(
        data=args.data,
        heads=tuple(h.strip() for h in args.heads.split(",") if h.strip()),
        backbone=args.backbone,
        weights=args.weights,
        input_size=args.size,
        pooling=args.pooling,
        layer=args.layer,
        resize=args.resize,
        batch_size=args.batch_size,
        cache_dir=args.cache_dir,
        seed=args.seed,
        verbose=not args.quiet,
        log=(lambda _: None) if args.json else print,
    )
    return result, f"report: {result['summary']}"


_COMMANDS = {
    "extract": _extract, "train": _train, "predict": _predict, "evaluate": _evaluate,
    "compare": _compare, "backbones": _backbones, "cache": _cache, "demo": _demo,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``featx`` command; returns the exit status."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out
    args = _parser().parse_args(argv)
    as_json = getattr(args, "json", False)
    try:
        # With --json, stdout carries exactly one JSON object: anything else printed during
        # the run (Keras' download progress, for one) goes to stderr.
        with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
            result, text = _COMMANDS[args.command](args)
    except (ValueError, TypeError, OSError, RuntimeError) as exc:
        print(f"featx {args.command}: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, ensure_ascii=True) if as_json else text)
    failed_check = args.command == "cache" and args.action == "verify" and not result["ok"]
    return 1 if failed_check else 0


if __name__ == "__main__":
    sys.exit(main())
