"""Decoding in processes (``Extractor(decode_in=...)``): the same vectors and failures as
threads, the "auto" rule, and the errors."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CountingBackbone, random_image

import featx.extract as extract_module
from featx import DecodeError, Extractor
from featx.augment import AugmentedCopy, AugmentPolicy
from featx.cli import main


@pytest.fixture
def photos(tmp_path):
    """24 images in 2 classes, JPEG and PNG, of several sizes, and one truncated JPEG."""
    root = tmp_path / "photos"
    for c, name in enumerate(["a", "b"]):
        (root / name).mkdir(parents=True)
        for i in range(12):
            image = random_image(100 * c + i, size=(40 + 7 * i, 30 + 5 * i))
            image.save(root / name / f"{i:02d}.{'png' if i % 3 == 0 else 'jpg'}")
    good = (root / "a" / "01.jpg").read_bytes()
    (root / "b" / "broken.jpg").write_bytes(good[: len(good) // 3])
    return root


def spy_on_processes(monkeypatch) -> list[int]:
    """Count the runs that decoded in processes."""
    calls: list[int] = []
    original = extract_module._BatchStream._decoded_in_processes

    def spy(self):
        calls.append(len(self._jobs))
        return original(self)

    monkeypatch.setattr(extract_module._BatchStream, "_decoded_in_processes", spy)
    return calls


def extract(folder, decode_in, view=None, **options):
    backbone = CountingBackbone(input_size=24)
    extractor = Extractor(backbone, cache_dir=None, verbose=False, decode_in=decode_in,
                          workers=2, view=view, **options)  # fmt: skip
    return extractor.extract(str(folder), on_error="skip"), backbone


@pytest.mark.parametrize("decoder", ["pillow", "fast"])
def test_processes_give_the_threads_vectors_and_failures(photos, monkeypatch, decoder):
    calls = spy_on_processes(monkeypatch)
    in_threads, _ = extract(photos, "threads", decoder=decoder)
    assert calls == []
    in_processes, backbone = extract(photos, "processes", decoder=decoder)
    assert calls == [25]  # every file went to the processes, the broken one too
    assert np.array_equal(in_processes.X, in_threads.X, equal_nan=True)
    assert in_processes.failed == in_threads.failed
    assert [name for name, _ in in_processes.failed] == [str(photos / "b" / "broken.jpg")]
    assert in_processes.X.shape == (24, 6)  # the broken file is left out, as in threads
    assert len(backbone.seen) == 24  # the network ran in this process, on every good image


def test_a_view_is_applied_in_the_processes_as_in_threads(photos):
    view = AugmentedCopy(AugmentPolicy(copies=1), 0)
    in_threads, _ = extract(photos, "threads", view=view)
    in_processes, _ = extract(photos, "processes", view=view)
    plain, _ = extract(photos, "processes")
    assert np.array_equal(in_processes.X, in_threads.X, equal_nan=True)
    assert not np.allclose(np.nan_to_num(in_processes.X), np.nan_to_num(plain.X))


def test_a_broken_file_stops_a_run_in_processes_with_its_name(photos):
    extractor = Extractor(CountingBackbone(), cache_dir=None, verbose=False,
                          decode_in="processes", workers=2)  # fmt: skip
    with pytest.raises(DecodeError, match=r"broken\.jpg"):
        extractor.extract(str(photos))


def test_in_memory_images_decode_in_threads_whatever_is_asked(monkeypatch):
    calls = spy_on_processes(monkeypatch)
    arrays = [np.asarray(random_image(i)) for i in range(5)]
    a = Extractor(CountingBackbone(), cache_dir=None, verbose=False, decode_in="processes")
    b = Extractor(CountingBackbone(), cache_dir=None, verbose=False, decode_in="threads")
    assert np.array_equal(a.extract(arrays).X, b.extract(arrays).X)
    assert calls == []


class GpuCounting(CountingBackbone):
    def runs_on_gpu(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("cpus", "backbone", "min_files", "expected"),
    [
        (16, GpuCounting, 10, 1),  # a GPU, enough CPUs and files: processes
        (16, CountingBackbone, 10, 0),  # the network on the CPU: threads
        (4, GpuCounting, 10, 0),  # too few CPUs for processes to pay
        (16, GpuCounting, 1000, 0),  # too few files to pay for starting processes
    ],
)
def test_auto_decodes_in_processes_only_where_they_pay(
    photos, monkeypatch, cpus, backbone, min_files, expected
):
    calls = spy_on_processes(monkeypatch)
    monkeypatch.setattr(extract_module.os, "cpu_count", lambda: cpus)
    monkeypatch.setattr(extract_module, "PROCESS_MIN_FILES", min_files)
    extractor = Extractor(backbone(), cache_dir=None, verbose=False, workers=2)
    assert extractor.decode_in == "auto"
    extractor.extract(str(photos), on_error="skip")
    assert len(calls) == expected


def test_the_cpu_keras_backbone_does_not_claim_a_gpu():
    pytest.importorskip("tensorflow")
    import tensorflow as tf

    extractor = Extractor("MobileNetV2", weights=None, input_size=32, cache_dir=None)
    assert extractor.backbone.runs_on_gpu() == bool(tf.config.list_physical_devices("GPU"))


def test_an_unknown_decode_in_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"decode_in='gpu'.*\('auto', 'threads', 'processes'\)"):
        Extractor(CountingBackbone(), cache_dir=None, decode_in="gpu")


def test_the_extract_command_takes_decode_in(photos, tmp_path, capsys, monkeypatch):
    calls = spy_on_processes(monkeypatch)
    args = ["extract", str(photos), "--backbone", "VGG16", "--weights", "none", "--size", "32"]
    args += ["--quiet", "--cache-dir", str(tmp_path / "cache"), "--json", "--on-error", "skip"]
    assert main([*args, "--decode-in", "processes"]) == 0
    assert calls == [25]
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--decode-in", "gpu"])
    assert exit_.value.code == 2
    assert "invalid choice: 'gpu'" in capsys.readouterr().err
