"""The GPU speed table: the forward pass, and featx cold feeding it (issue 18, part 3).

On a machine with a GPU, for MobileNetV2 and ResNet50 at 224 px with random weights (speed
does not depend on the weight values):

- **forward**: fixed-shape float32 batches of 0-255 pixels, decoded beforehand, sent from
  host memory through the family's ``preprocess_input``, the network and average pooling,
  vectors back in host memory (what featx's extractor asks of a backbone, per batch), at
  batch 32 to 512, float32 and mixed float16. ``device-resident`` repeats it with the batch
  already on the GPU (the copy to the card left out).
- **decode**: featx's own hashing + decoding alone, by 4, 8 and 16 threads and by 8 and 16
  processes (``decode_in="processes"``: joblib's loky workers, started beforehand, their
  start time recorded apart), for the Pillow and the fast decoder: how many images/s the
  CPUs can feed.
- **featx cold**: ``Extractor.extract(folder)`` into an empty cache (hashing, decoding,
  compute, cache writes), the model already compiled, for each precision, decoder and
  thread or process count, at ``--cold-batches``; ``cold/forward`` is its speed over the
  forward pass's at the same batch and precision: 1.0 means decoding keeps the GPU busy.
- **featx warm**: a new extractor over the filled cache.

Which runtime runs the network. Under ``KERAS_BACKEND=tensorflow`` (featx's own) the
network is featx's ``KerasBackbone``: one ``tf.function`` per batch shape, XLA off as featx
ships it, and again with ``jit_compile=True`` (XLA on). The GPU machines lent to this
project have PyTorch and JAX but no TensorFlow (and carry at most 64 MiB of wheels, far
less than TensorFlow's CUDA build), so under ``KERAS_BACKEND=jax`` the same
``keras.applications`` network runs as one ``jax.jit`` function (XLA always on) behind a
small :class:`featx.Backbone` subclass defined here; featx's extractor, decoders and cache
are unchanged. ``--torch-forward`` adds the forward pass under Keras' PyTorch backend
(eager CUDA kernels: XLA off) from a subprocess.

Run from the repository root::

    python benchmarks/gpu_table.py --folder PHOTOS --out gpu.json      # measure
    python benchmarks/gpu_table.py --table gpu.json                    # print the table

Every result is written to ``--out`` as soon as it is measured, and no new measurement
starts after ``--budget`` seconds, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract_speed import batches_of, image_paths, measure

from featx.backbones import Backbone, get_spec

POLICIES = {"float32": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}
STARTED = time.perf_counter()


class JaxKerasBackbone(Backbone):
    """A ``keras.applications`` network, average-pooled, as one ``jax.jit`` function.

    Used where Keras runs on JAX (no TensorFlow): featx's extractor feeds it exactly as it
    feeds a :class:`featx.backbones.KerasBackbone`.
    """

    def __init__(self, architecture: str, size: int, precision: str = "float32") -> None:
        import jax
        import jax.numpy as jnp
        import keras

        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(POLICIES[precision])
        try:
            model = getattr(keras.applications, architecture)(
                include_top=False, weights=None, input_shape=(size, size, 3)
            )
        finally:
            keras.config.set_dtype_policy(previous)
        preprocess = get_spec(architecture).preprocess_input()
        self.name = architecture
        self.input_size = (size, size)
        self.dim = int(model.output_shape[-1])
        self.precision = precision
        self._variables = (
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
        )

        def embed(trainable, non_trainable, images):
            features, _ = model.stateless_call(
                trainable, non_trainable, preprocess(images), training=False
            )
            return jnp.mean(features.astype(jnp.float32), axis=(1, 2))

        self._embed = jax.jit(embed)

    def identity(self) -> dict[str, Any]:
        return {
            "architecture": f"jax:{self.name}",
            "weights": None,
            "input_size": list(self.input_size),
            "precision": self.precision,
            "dtype": "float32",
        }

    def prepare(self, batch_shape: tuple[int, ...]) -> None:
        self.embed(np.zeros(batch_shape, np.float32))

    def embed(self, batch: Any) -> np.ndarray:
        return np.asarray(self._embed(*self._variables, batch))

    def runs_on_gpu(self) -> bool:
        import jax

        return jax.devices()[0].platform == "gpu"

    def on_device(self, batch: np.ndarray) -> Any:
        import jax

        return jax.device_put(batch)

    def block(self, batch: Any) -> None:
        self._embed(*self._variables, batch).block_until_ready()


class TfBackbone:
    """featx's own ``KerasBackbone`` (XLA off), and the same network and pooling traced
    with ``jit_compile=True`` (XLA on), for the forward rows under TensorFlow."""

    def __init__(self, architecture: str, size: int, precision: str, xla: bool) -> None:
        from featx.backbones import resolve_backbone

        self.featx = resolve_backbone(
            architecture, weights=None, input_size=size, precision=precision
        )
        self.architecture, self.xla = architecture, xla
        self._functions: dict[tuple[int, ...], Any] = {}

    def embed(self, batch: Any) -> np.ndarray:
        if not self.xla:
            return self.featx.embed(batch)
        return self._xla(batch.shape)(batch).numpy()

    def _xla(self, shape):
        import tensorflow as tf

        fn = self._functions.get(shape)
        if fn is None:
            model, preprocess = self.featx.model, get_spec(self.architecture).preprocess_input()

            @tf.function(jit_compile=True, input_signature=[tf.TensorSpec(shape, tf.float32)])
            def fn(images):
                features = model(preprocess(images), training=False)
                return tf.reduce_mean(tf.cast(features, tf.float32), axis=(1, 2))

            self._functions[shape] = fn
        return fn

    def on_device(self, batch: np.ndarray) -> Any:
        import tensorflow as tf

        with tf.device("/GPU:0"):
            return tf.identity(batch)

    def block(self, batch: Any) -> None:
        self.embed(batch)


# -- measurements ----------------------------------------------------------------------------


def out_of_time(args) -> bool:
    return time.perf_counter() - STARTED > args.budget


def timed_loop(step, min_seconds: float) -> tuple[float, int]:
    """Call ``step()`` until ``min_seconds`` have passed; (seconds, calls)."""
    calls, t0 = 0, time.perf_counter()
    while True:
        step()
        calls += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds and calls >= 3:
            return elapsed, calls


def forward_rows(args, model, pixels: np.ndarray, results: dict, key: dict) -> None:
    for bs in args.batches:
        if out_of_time(args):
            return
        batches = batches_of(pixels[: max(bs, min(len(pixels), 4 * bs))], bs)
        t0 = time.perf_counter()
        model.embed(batches[0])  # compile for this shape, not timed
        compile_s = time.perf_counter() - t0
        cursor = iter(range(10**9))

        def from_host(batches=batches, cursor=cursor) -> None:
            model.embed(batches[next(cursor) % len(batches)])

        seconds, calls = timed_loop(from_host, args.min_seconds)
        resident = model.on_device(batches[0])
        model.block(resident)
        seconds_dev, calls_dev = timed_loop(lambda r=resident: model.block(r), args.min_seconds)
        row = dict(
            key,
            mode="forward",
            batch=bs,
            compile_seconds=round(compile_s, 2),
            images_per_second=round(calls * bs / seconds, 1),
            device_resident_images_per_second=round(calls_dev * bs / seconds_dev, 1),
        )
        record(args, results, row)


def decode_rows(args, folder: Path, results: dict) -> None:
    """featx's hashing + decoding alone, in threads and in processes (featx's own unit of
    work for processes, :func:`featx._pipeline.decode_files`, in joblib's loky workers)."""
    from joblib import Parallel, delayed

    from featx import Extractor
    from featx._pipeline import decode_files

    paths = image_paths(folder, None)
    contents = [Path(p).read_bytes() for p in paths]
    files = [(p, p) for p in paths]
    chunks = [files[k : k + 16] for k in range(0, len(files), 16)]
    for decoder in args.decoders:
        extractor = Extractor(_Stub(args.size), decoder=decoder, cache_dir=None, verbose=False)
        decoding = extractor.decoding

        def one(i: int, decoding=decoding) -> None:
            decoding.decode(contents[i], paths[i])

        for kind, n in workers(args):
            if out_of_time(args):
                return
            if kind == "auto":
                continue  # the same work as the processes rows
            if kind == "threads":
                with ThreadPoolExecutor(n) as pool:
                    list(pool.map(one, range(min(64, len(paths)))))  # warm the threads
                    with measure("decode", len(paths)) as timing:
                        list(pool.map(one, range(len(paths))))
            else:
                start_processes(args, results, n)
                parallel = Parallel(n_jobs=n, backend="loky", return_as="generator")
                with measure("decode", len(paths)) as timing:
                    for _ in parallel(delayed(decode_files)(decoding, c) for c in chunks):
                        pass
            row = dict(
                mode="decode",
                decoder=decoder,
                decode_in=kind,
                threads=n,
                images=len(paths),
                images_per_second=round(timing.images_per_second, 1),
                cpu_seconds=round(timing.cpu_seconds, 2),
            )
            record(args, results, row)


def workers(args) -> list[tuple[str, int | None]]:
    """(decode_in, workers) of each decoding setting measured; ("auto", None) is featx's
    default (processes on a GPU machine of 8 or more CPUs, one per CPU but one)."""
    settings: list[tuple[str, int | None]] = [("threads", n) for n in args.threads]
    settings += [("processes", n) for n in args.processes]
    return settings + ([("auto", None)] if args.auto else [])


def start_processes(args, results: dict, n: int) -> None:
    """Start (or reuse) joblib's loky pool of ``n`` workers, importing featx in each; the
    first start of each size is recorded, the timed rows then reuse the pool."""
    from joblib import Parallel, delayed

    t0 = time.perf_counter()
    Parallel(n_jobs=n, backend="loky")(delayed(_import_featx)() for _ in range(4 * n))
    seconds = time.perf_counter() - t0
    if n not in results.setdefault("process_start_seconds", {}):
        results["process_start_seconds"][n] = round(seconds, 2)


def _import_featx() -> None:
    import featx._pipeline  # noqa: F401


class _Stub(Backbone):
    """A backbone that is never called: the decode rows only use the extractor's decoder."""

    name = "stub"

    def __init__(self, size: int) -> None:
        self.input_size, self.dim = (size, size), 1

    def identity(self) -> dict[str, Any]:
        return {"architecture": "stub", "input_size": list(self.input_size)}


def cold_rows(args, model, folder: Path, results: dict, key: dict) -> None:
    from featx import Extractor

    n = len(image_paths(folder, None))
    for bs in args.cold_batches:
        model.prepare((bs, args.size, args.size, 3))
    with tempfile.TemporaryDirectory() as tmp:
        for bs, decoder, (kind, threads) in (
            (bs, d, w) for bs in args.cold_batches for d in args.decoders for w in workers(args)
        ):
            if out_of_time(args):
                return
            if kind != "threads":
                start_processes(args, results, threads or max(1, (os.cpu_count() or 1) - 1))
            cache = Path(tmp) / f"{decoder}-{kind}-{threads}-{bs}"
            extractor = Extractor(
                model,
                batch_size=bs,
                decoder=decoder,
                workers=threads,
                decode_in=kind,
                cache_dir=cache,
                verbose=False,
            )
            with measure("featx-cold", n) as timing:
                result = extractor.extract(str(folder))
            if result.cache_misses != n:
                raise RuntimeError(f"cold run computed {result.cache_misses} of {n} images")
            row = dict(
                key,
                mode="featx-cold",
                batch=bs,
                decoder=decoder,
                decode_in=kind,
                threads=threads,
                images=n,
                images_per_second=round(timing.images_per_second, 1),
                cpu_seconds=round(timing.cpu_seconds, 2),
            )
            record(args, results, row)
        if out_of_time(args):
            return
        extractor = Extractor(model, batch_size=bs, decoder=decoder, cache_dir=cache, verbose=False)
        with measure("featx-warm", n) as timing:
            result = extractor.extract(str(folder))
        if result.cache_misses:
            raise RuntimeError(f"warm run computed {result.cache_misses} images")
        record(
            args,
            results,
            dict(
                key,
                mode="featx-warm",
                images=n,
                images_per_second=round(timing.images_per_second, 1),
            ),
        )


def guarded(args, results: dict, what: str, fn, *fn_args) -> None:
    """Run one section; a failure is recorded as a row and the next section still runs."""
    try:
        fn(*fn_args)
    except Exception as error:
        record(args, results, {"mode": f"{what}-failed", "stderr": repr(error)[-2000:]})


def record(args, results: dict, row: dict) -> None:
    results["rows"].append(row)
    print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count()}
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        info["gpu"] = smi.stdout.strip()
    except (OSError, subprocess.SubprocessError) as error:
        info["gpu"] = f"nvidia-smi failed: {error}"
    import keras

    info["keras"] = keras.__version__
    info["backend"] = keras.backend.backend()
    if info["backend"] == "jax":
        import jax

        info["jax"] = jax.__version__
        info["devices"] = [str(d) for d in jax.devices()]
    elif info["backend"] == "tensorflow":
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
        info["devices"] = [d.name for d in tf.config.list_physical_devices()]
    return info


def torch_forward(args, results: dict) -> None:
    """The forward pass under Keras' PyTorch backend, in a subprocess (a process has one
    Keras backend)."""
    code = (
        "import json, sys, time, numpy as np, torch, keras\n"
        "from featx.backbones import get_spec\n"
        "size, rows = int(sys.argv[1]), []\n"
        "for arch in sys.argv[2].split(','):\n"
        "  for precision, policy in (('float32', 'float32'), ('float16', 'mixed_float16')):\n"
        "    keras.config.set_dtype_policy(policy)\n"
        "    model = getattr(keras.applications, arch)(include_top=False, weights=None,"
        " input_shape=(size, size, 3))\n"
        "    pre = get_spec(arch).preprocess_input()\n"
        "    for bs in (128, 512):\n"
        "      x = np.random.default_rng(0).uniform(0, 255, (bs, size, size, 3))"
        ".astype('float32')\n"
        "      def step():\n"
        "        with torch.no_grad():\n"
        "          y = model(pre(torch.from_numpy(x).cuda()), training=False)\n"
        "          return y.float().mean(dim=(1, 2)).cpu().numpy()\n"
        "      step(); step(); n, t0 = 0, time.perf_counter()\n"
        "      while time.perf_counter() - t0 < 2 or n < 3:\n"
        "        step(); n += 1\n"
        "      rows.append(dict(mode='forward', runtime='keras-torch (eager, no XLA)',"
        " backbone=arch, precision=precision, batch=bs,"
        " images_per_second=round(n * bs / (time.perf_counter() - t0), 1)))\n"
        "print('ROWS ' + json.dumps(rows))\n"
    )
    env = dict(os.environ, KERAS_BACKEND="torch")
    done = subprocess.run(
        [sys.executable, "-c", code, str(args.size), ",".join(args.backbones)],
        env=env,
        capture_output=True,
        text=True,
        timeout=max(30, args.budget - (time.perf_counter() - STARTED)),
    )
    for line in done.stdout.splitlines():
        if line.startswith("ROWS "):
            for row in json.loads(line[5:]):
                record(args, results, row)
            return
    record(args, results, {"mode": "torch-forward-failed", "stderr": done.stderr[-2000:]})


def run(args) -> None:
    import keras

    from featx.images import decode

    results: dict[str, Any] = {"args": vars(args), "rows": []}
    if args.torch_forward:  # before JAX takes its share of the GPU's memory
        guarded(args, results, "torch-forward", torch_forward, args, results)
    results["machine"] = machine()
    print(json.dumps(results["machine"]), flush=True)
    folder = Path(args.folder)
    paths = image_paths(folder, None)
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        pixels = np.stack(
            list(pool.map(lambda p: decode(Path(p).read_bytes(), (args.size, args.size)), paths))
        ).astype(np.float32)
    backend = keras.backend.backend()
    guarded(args, results, "decode", decode_rows, args, folder, results)
    for architecture in args.backbones:
        for precision in args.precisions:
            if out_of_time(args):
                break
            variants = [False, True] if backend == "tensorflow" else [True]
            for xla in variants:
                if backend == "jax":
                    model: Any = JaxKerasBackbone(architecture, args.size, precision)
                    runtime = "keras-jax (XLA)"
                else:
                    model = TfBackbone(architecture, args.size, precision, xla)
                    runtime = "keras-tensorflow " + ("(XLA)" if xla else "(featx, no XLA)")
                key = dict(backbone=architecture, precision=precision, runtime=runtime)
                guarded(args, results, "forward", forward_rows, args, model, pixels, results, key)
                if backend == "jax":
                    guarded(args, results, "cold", cold_rows, args, model, folder, results, key)
                elif not xla:
                    featx_backbone = model.featx
                    guarded(
                        args, results, "cold", cold_rows, args, featx_backbone, folder, results, key
                    )
    results["seconds"] = round(time.perf_counter() - STARTED, 1)
    Path(args.out).write_text(json.dumps(results, indent=1))


# -- the table -------------------------------------------------------------------------------


def table(results: dict) -> str:
    rows = results["rows"]
    m = results.get("machine", {})
    lines = [
        f"Machine: {m.get('gpu')}; {m.get('cpus')} CPUs; Keras {m.get('keras')} on "
        f"{m.get('backend')} {m.get('jax') or m.get('tensorflow') or ''}.",
        "",
        "Forward pass (images/s; from host memory, and with the batch already on the GPU):",
        "",
        "| network | runtime | precision | batch | from host | on device | compile s |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    forward = {}
    for r in rows:
        if r["mode"] != "forward":
            continue
        forward[(r["backbone"], r["precision"], r["runtime"], r["batch"])] = r["images_per_second"]
        lines.append(
            f"| {r['backbone']} | {r['runtime']} | {r['precision']} | {r['batch']} | "
            f"{r['images_per_second']:,.0f} | "
            + (
                f"{r['device_resident_images_per_second']:,.0f} | {r['compile_seconds']}"
                if "device_resident_images_per_second" in r
                else "| "
            )
            + " |"
        )
    lines += [
        "",
        f"featx hashing + decoding alone (images/s, {results['args']['size']} px):",
        "",
        "| decoder | in | workers | images/s | CPU-s per 1,000 (this process) |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        if r["mode"] == "decode":
            lines.append(
                f"| {r['decoder']} | {r.get('decode_in', 'threads')} | {r['threads']} | "
                f"{r['images_per_second']:,.0f} | "
                f"{1000 * r['cpu_seconds'] / r['images']:.2f} |"
            )
    lines += [
        "",
        "featx cold (empty cache) and cold/forward at the same batch and precision:",
        "",
        "| network | precision | batch | decoder | in | workers | images/s | cold/forward |",
        "|---|---|---:|---|---|---:|---:|---:|",
    ]
    for r in rows:
        if r["mode"] == "featx-cold":
            ref = forward.get((r["backbone"], r["precision"], r["runtime"], r["batch"]))
            ratio = f"{r['images_per_second'] / ref:.2f}" if ref else "n/a"
            lines.append(
                f"| {r['backbone']} | {r['precision']} | {r['batch']} | {r['decoder']} | "
                f"{r.get('decode_in', 'threads')} | {r['threads'] or 'default'} | "
                f"{r['images_per_second']:,.0f} | {ratio} |"
            )
    starts = results.get("process_start_seconds")
    if starts:
        lines += [
            "",
            "Starting the decoding processes (once; later runs reuse them): "
            + ", ".join(f"{n} in {s} s" for n, s in starts.items()),
        ]
    warm = [r for r in rows if r["mode"] == "featx-warm"]
    if warm:
        lines += [""] + [
            f"featx warm, {r['backbone']} {r['precision']}: {r['images_per_second']:,.0f} images/s"
            for r in warm
        ]
    failed = [r for r in rows if r["mode"].endswith("failed")]
    lines += [f"\n{r['mode']}: {r.get('stderr', '')[-500:]}" for r in failed]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    shared = Path(os.environ.get("FEATX_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--folder", default=str(shared / "datasets" / "clothing10" / "train"))
    parser.add_argument("--out", default="gpu_table.json")
    parser.add_argument("--table", metavar="JSON", help="print the table of a finished run")
    parser.add_argument("--backbones", default="MobileNetV2,ResNet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batches", default="32,128,256,512")
    parser.add_argument("--precisions", default="float32,float16")
    parser.add_argument("--threads", default="4,8,16", help="decoding threads")
    parser.add_argument("--processes", default="8,16", help="decoding processes")
    parser.add_argument("--decoders", default="pillow,fast")
    parser.add_argument("--cold-batches", default="256", help="featx cold's batch sizes")
    parser.add_argument("--auto", action="store_true", help="also featx's default decode_in")
    parser.add_argument("--min-seconds", type=float, default=1.5)
    parser.add_argument("--budget", type=float, default=420, help="seconds; no new row after")
    parser.add_argument("--torch-forward", action="store_true")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return
    args.backbones = args.backbones.split(",")
    args.batches = [int(b) for b in args.batches.split(",")]
    args.precisions = args.precisions.split(",")
    args.threads = [int(t) for t in args.threads.split(",") if t]
    args.processes = [int(t) for t in args.processes.split(",") if t]
    args.decoders = args.decoders.split(",")
    args.cold_batches = [int(b) for b in args.cold_batches.split(",")]
    args.batches += [b for b in args.cold_batches if b not in args.batches]
    run(args)
    print(table(json.loads(Path(args.out).read_text())))


if __name__ == "__main__":
    main()
