"""The Ray engine: same vectors, order and failures as the local engine, one shared cache.

Every test here runs on one local Ray cluster of 2 CPUs, shared by the module. Ray is the
``ray`` extra, which CI installs (``.ci/run``): there a missing Ray fails these tests;
elsewhere they are skipped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import CLOTHING10, MOBILENET_WEIGHTS, ROOT, random_image, require_shared

from featx import DecodeError, Extractor
from featx.augment import AugmentPolicy
from featx.backbones import Backbone, resolve_backbone
from featx.cli import main

N_IMAGES = 300
OPTIONS = {"weights": None, "input_size": 32, "batch_size": 16, "verbose": False}


@pytest.fixture(scope="module")
def ray_cluster():
    try:
        import ray
    except ImportError:
        message = 'The Ray tests need Ray Data: pip install -e ".[test,ray]".'
        if os.environ.get("CI"):
            pytest.fail(message + " .ci/run installs it.")
        pytest.skip(message)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A few hundred JPEGs and PNGs in 3 class folders, one of them corrupt."""
    root = tmp_path_factory.mktemp("ray") / "photos"
    for i in range(N_IMAGES):
        folder = root / ("cat", "dog", "fish")[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        random_image(i, size=(40 + i % 7, 36)).save(folder / f"{i:04d}.{('jpg', 'png')[i % 2]}")
    jpeg = (root / "dog" / "0001.png").read_bytes()
    (root / "dog" / "0001-corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + jpeg[4:200])
    return root


def _same(a, b) -> None:
    assert np.array_equal(a.X, b.X)
    assert a.paths == b.paths
    assert np.array_equal(a.index, b.index) and np.array_equal(a.y, b.y)
    assert a.classes == b.classes and a.failed == b.failed


def _rows_stored(cache_dir: Path) -> int:
    """Vectors in every shard file of a cache: a vector stored twice counts twice."""
    return sum(len(np.load(p)) for p in cache_dir.rglob("shards/*/*.npy"))


def test_ray_equals_local_and_both_share_one_cache(ray_cluster, photos, tmp_path):
    ray_run = Extractor("MobileNetV2", cache_dir=tmp_path / "a", engine="ray", **OPTIONS)
    local = Extractor("MobileNetV2", cache_dir=tmp_path / "b", **OPTIONS)
    on_ray = ray_run.extract(photos, on_error="skip")
    here = local.extract(photos, on_error="skip")

    _same(on_ray, here)
    assert len(on_ray) == N_IMAGES and on_ray.cache_misses == N_IMAGES
    assert [name for name, _ in on_ray.failed] == [str(photos / "dog" / "0001-corrupt.jpg")]
    assert _rows_stored(tmp_path / "a") == N_IMAGES

    # Vectors computed on Ray are the local engine's cache hits, and the other way round.
    local_on_ray_cache = Extractor("MobileNetV2", cache_dir=tmp_path / "a", **OPTIONS)
    again = local_on_ray_cache.extract(photos, on_error="skip")
    assert again.cache_hits == N_IMAGES and again.cache_misses == 0
    _same(again, here)
    ray_on_local_cache = Extractor("MobileNetV2", cache_dir=tmp_path / "b", engine="ray", **OPTIONS)
    again = ray_on_local_cache.extract(photos, on_error="skip")
    assert again.cache_hits == N_IMAGES and again.cache_misses == 0
    _same(again, here)


def test_ray_computes_only_the_misses_of_a_partly_filled_cache(ray_cluster, photos, tmp_path):
    paths = sorted(str(p) for p in photos.rglob("*.png"))
    Extractor("MobileNetV2", cache_dir=tmp_path, **OPTIONS).extract(paths[::2])
    on_ray = Extractor("MobileNetV2", cache_dir=tmp_path, engine="ray", **OPTIONS).extract(paths)
    assert on_ray.cache_hits == len(paths[::2]) and on_ray.cache_misses == len(paths[1::2])
    assert _rows_stored(tmp_path) == len(paths)
    here = Extractor("MobileNetV2", cache_dir=None, **OPTIONS).extract(paths)
    _same(on_ray, here)


def test_ray_streams_into_an_out_folder_like_the_local_engine(ray_cluster, photos, tmp_path):
    """engine='ray' with out=: the memory-mapped result equals the local in-memory one."""
    on_ray = Extractor("MobileNetV2", cache_dir=tmp_path / "c", engine="ray", **OPTIONS).extract(
        photos, on_error="skip", out=tmp_path / "emb"
    )
    here = Extractor("MobileNetV2", cache_dir=None, **OPTIONS).extract(photos, on_error="skip")
    assert isinstance(on_ray.X, np.memmap)
    _same(on_ray, here)


def test_views_and_center_crop_apply_on_the_workers_as_locally(ray_cluster, photos, tmp_path):
    paths = sorted(str(p) for p in photos.rglob("*.jpg"))[:40]
    options = {**OPTIONS, "view": AugmentPolicy().views()[0], "resize": "center_crop"}
    on_ray = Extractor("MobileNetV2", cache_dir=tmp_path / "a", engine="ray", **options)
    here = Extractor("MobileNetV2", cache_dir=tmp_path / "b", **options)
    plain = Extractor("MobileNetV2", cache_dir=None, **OPTIONS).extract(paths)
    augmented = on_ray.extract(paths, on_error="skip")
    _same(augmented, here.extract(paths, on_error="skip"))
    assert not np.array_equal(augmented.X, plain.X[: len(augmented)])


class KillOnce(Backbone):
    """A real network whose Ray actor SIGKILLs its own process once, after ``after`` batches.

    The marker file records the kill, so the restarted actor (and the other actor) carry
    on: the run must finish with every image, each stored once.
    """

    def __init__(self, inner: Backbone, marker: str, after: int) -> None:
        self.inner, self.marker, self.after, self.calls = inner, marker, after, 0
        self.name, self.input_size, self.dim = inner.name, inner.input_size, inner.dim

    def identity(self) -> dict:
        return self.inner.identity()  # the same vectors, so the same fingerprint

    def prepare(self, batch_shape) -> None:
        self.inner.prepare(batch_shape)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls > self.after and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return self.inner.embed(batch)


def test_a_worker_killed_mid_run_loses_nothing(ray_cluster, photos, tmp_path):
    from ray import cloudpickle

    # Ray's workers cannot import this test module; ship KillOnce's code by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    marker = tmp_path / "killed"
    inner = resolve_backbone("MobileNetV2", weights=None, input_size=32)
    killer = Extractor(
        KillOnce(inner, str(marker), after=3), cache_dir=tmp_path / "cache", engine="ray",
        **{k: v for k, v in OPTIONS.items() if k not in ("weights", "input_size")},
    )  # fmt: skip
    on_ray = killer.extract(photos, on_error="skip")

    assert marker.exists(), "no actor was killed: the test proved nothing"
    here = Extractor("MobileNetV2", cache_dir=None, **OPTIONS).extract(photos, on_error="skip")
    _same(on_ray, here)
    assert _rows_stored(tmp_path / "cache") == N_IMAGES  # nothing stored twice
    cached = Extractor(inner, cache_dir=tmp_path / "cache", verbose=False, batch_size=16)
    assert cached.extract(photos, on_error="skip").cache_misses == 0


def test_decode_failure_raises_as_the_local_engine_does(ray_cluster, photos, tmp_path):
    messages = []
    for engine in ("local", "ray"):
        ex = Extractor("MobileNetV2", cache_dir=tmp_path / engine, engine=engine, **OPTIONS)
        with pytest.raises(DecodeError, match=r"0001-corrupt\.jpg") as caught:
            ex.extract(photos, on_error="raise")
        messages.append(str(caught.value))
    assert messages[0] == messages[1]
    # What the Ray run computed before it stopped is in the cache; the rest is not.
    kept = Extractor("MobileNetV2", cache_dir=tmp_path / "ray", **OPTIONS)
    kept = kept.extract(photos, on_error="skip")
    assert kept.cache_hits > 0 and kept.cache_hits + kept.cache_misses == N_IMAGES


def test_engine_options_are_checked(photos, tmp_path):
    with pytest.raises(ValueError, match="engine='spark' is not supported"):
        Extractor("MobileNetV2", engine="spark", **OPTIONS)
    ex = Extractor("MobileNetV2", cache_dir=None, **OPTIONS)
    with pytest.raises(ValueError, match="engine='Ray' is not supported"):
        ex.extract(photos, engine="Ray")
    with pytest.raises(ValueError, match="not a Ray cluster address"):
        ex.extract(photos, engine="ray", address="http://head:8265/")
    with pytest.raises(ValueError, match="with engine='local'"):
        Extractor("MobileNetV2", address="auto", **OPTIONS)
    for actors in (0, 1.5, "2"):
        with pytest.raises(ValueError, match=rf"ray_actors={actors!r} must be a positive"):
            Extractor("MobileNetV2", engine="ray", ray_actors=actors, **OPTIONS)
    # A per-call engine="local" runs here, whatever cluster the extractor names.
    on_cluster = Extractor("MobileNetV2", engine="ray", address="auto", cache_dir=None, **OPTIONS)
    assert len(on_cluster.extract(photos, engine="local", on_error="skip")) == N_IMAGES
    with pytest.raises(ValueError, match="ray_cpus_per_actor=0"):
        Extractor("MobileNetV2", engine="ray", ray_cpus_per_actor=0, **OPTIONS)


def test_an_unreachable_cluster_fails_fast_naming_the_address(ray_cluster, photos):
    ex = Extractor("MobileNetV2", cache_dir=None, engine="ray", address="127.0.0.1:1", **OPTIONS)
    with pytest.raises(ConnectionError, match=r"Cannot reach a Ray cluster at address='127"):
        ex.extract(photos, on_error="skip")


def test_in_memory_images_are_refused_by_the_ray_engine(ray_cluster):
    images = np.zeros((2, 32, 32, 3), np.uint8)
    ex = Extractor("MobileNetV2", cache_dir=None, engine="ray", **OPTIONS)
    with pytest.raises(ValueError, match=r"in-memory images .* Use engine='local'"):
        ex.extract(images)


def test_a_missing_ray_names_the_extra_to_install(photos, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    ex = Extractor("MobileNetV2", cache_dir=None, engine="ray", **OPTIONS)
    with pytest.raises(ImportError, match=r'pip install "featx\[ray\]"'):
        ex.extract(photos, on_error="skip")


def test_the_cli_reports_a_missing_ray_without_a_traceback(photos, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    argv = [str(photos), "--engine", "ray", "--weights", "none", "--size", "32", "--quiet"]
    assert main(["extract", *argv, "--cache-dir", "none", "--on-error", "skip"]) == 1
    assert 'pip install "featx[ray]"' in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.shared
def test_cli_ray_extraction_of_clothing10_equals_the_local_one(ray_cluster, tmp_path):
    """The issue's done-when: 3,068 photos, real weights, 160 px, through `featx extract`."""
    require_shared()
    train = CLOTHING10 / "train"
    common = ["--weights", str(MOBILENET_WEIGHTS), "--size", "160", "--quiet", "--json"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    # A separate process, as a user runs it: it starts its own local Ray.
    done = subprocess.run(
        [sys.executable, "-m", "featx.cli", "extract", str(train), "--engine", "ray",
         "--ray-actors", "2", "--cache-dir", str(tmp_path / "ray"),
         "--out", str(tmp_path / "ray.npz"), *common],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["n_images"] == 3068 and summary["cache_misses"] == 3068
    assert summary["failed"] == []
    argv = ["extract", str(train), "--cache-dir", str(tmp_path / "local")]
    assert main([*argv, "--out", str(tmp_path / "local.npz"), *common]) == 0
    with np.load(tmp_path / "ray.npz") as on_ray, np.load(tmp_path / "local.npz") as here:
        assert np.array_equal(on_ray["X"], here["X"])
        assert np.array_equal(on_ray["paths"], here["paths"])
        assert np.array_equal(on_ray["y"], here["y"])
