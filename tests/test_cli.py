"""The featx command line: extract, backbones, cache; help, messages, logs, tables (the demo:
test_demo.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, SUMMARY_FIELDS

from featx import Embeddings
from featx.backbones import list_backbones
from featx.cli import main

EXTRACT = ["--backbone", "VGG16", "--weights", "none", "--size", "32", "--quiet"]


def _run_json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected exactly one JSON line on stdout, got: {out!r}"
    return json.loads(lines[0])


def test_extract_json_then_warm_run(image_folder, tmp_path, capsys):
    argv = ["extract", str(image_folder), *EXTRACT, "--cache-dir", str(tmp_path / "c"), "--json"]
    first = _run_json(capsys, argv)
    for key in SUMMARY_FIELDS:
        assert key in first
    assert (first["n_images"], first["dim"], first["cache_misses"]) == (12, 512, 12)
    second = _run_json(capsys, argv)
    assert (second["cache_misses"], second["cache_hits"]) == (0, 12)


def test_extract_writes_npz(image_folder, tmp_path, capsys):
    out = tmp_path / "emb.npz"
    main(["extract", str(image_folder), *EXTRACT, "--cache-dir", "none", "--out", str(out)])
    assert "12 images -> 512-d embeddings" in capsys.readouterr().out
    loaded = Embeddings.load(out)
    assert loaded.X.shape == (12, 512)
    assert loaded.classes == ["cat", "dog", "fish"]
    assert np.isfinite(loaded.X).all()


def test_extract_skip_lists_failures(image_folder, tmp_path, capsys):
    (image_folder / "cat" / "broken.jpg").write_text("not an image")
    argv = ["extract", str(image_folder), *EXTRACT, "--cache-dir", "none", "--json"]
    assert main(argv) == 1
    assert "broken.jpg" in capsys.readouterr().err
    result = _run_json(capsys, [*argv, "--on-error", "skip"])
    assert result["n_images"] == 12
    assert [f["input"] for f in result["failed"]] == [str(image_folder / "cat" / "broken.jpg")]


def test_unknown_backbone_exits_1_with_suggestion(image_folder, capsys):
    code = main(["extract", str(image_folder), "--backbone", "resnet50", "--quiet"])
    assert code == 1
    assert "Did you mean 'ResNet50'" in capsys.readouterr().err


def test_backbones_lists_the_registry(capsys):
    rows = _run_json(capsys, ["backbones", "--json"])["backbones"]
    assert [r["name"] for r in rows] == [s.name for s in list_backbones()]
    mobilenet = next(r for r in rows if r["name"] == "MobileNetV2")
    assert (mobilenet["default_size"], mobilenet["dim"]) == (224, 1280)
    assert main(["backbones"]) == 0
    assert "EfficientNetB7" in capsys.readouterr().out


def test_cache_info_and_clear(image_folder, tmp_path, capsys):
    cache = str(tmp_path / "c")
    main(["extract", str(image_folder), *EXTRACT, "--cache-dir", cache, "--json"])
    capsys.readouterr()
    info = _run_json(capsys, ["cache", "info", "--cache-dir", cache, "--json"])
    assert info["n_vectors"] == 12
    assert info["fingerprints"][0]["spec"]["backbone"]["architecture"] == "VGG16"
    assert _run_json(capsys, ["cache", "clear", "--cache-dir", cache, "--json"])["cleared"] == 12
    assert _run_json(capsys, ["cache", "info", "--cache-dir", cache, "--json"])["n_vectors"] == 0


@pytest.mark.skipif(shutil.which("featx") is None, reason="the featx script is not installed")
def test_installed_command_runs(tmp_path):
    done = subprocess.run(
        ["featx", "backbones", "--json"], capture_output=True, text=True, check=True
    )
    assert len(json.loads(done.stdout)["backbones"]) == len(list_backbones())


def test_the_cli_offers_exactly_the_heads_featx_heads_builds(capsys):
    from featx import heads

    with pytest.raises(SystemExit):
        main(["evaluate", "--head", "random-forest"])
    message = capsys.readouterr().err
    assert all(repr(kind) in message for kind in heads.HEADS)
    assert main(["heads", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["heads"]
    assert [row["name"] for row in listed] == list(heads.HEADS)


# -- what the command line says: help, version, progress, tables, messages ----------------------


def test_version_names_featx_and_the_versions_behind_its_vectors(capsys):
    import featx

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"featx {featx.__version__} (") and "keras" in out and "tensorflow" in out


def test_help_shows_each_default_and_what_top_means(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for shown in ("(default: MobileNetV2)", "(default: imagenet)", "(default: 32)",
                  "(default: logreg,svm,mlp)"):  # fmt: skip
        assert shown in text
    # --pooling's default depends on the network: its help says which.
    assert "none given: avg for feature maps, cls for keras-hub ViTs" in text
    assert "(default: None)" not in text and "(default: False)" not in text
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--top TOP classes shown per image, most probable first (default: 3)" in text


def test_tune_prints_progress_on_stderr_and_the_table_on_stdout(image_folder, tmp_path, capsys):
    argv = ["tune", str(image_folder), "--backbone", "VGG16", "--weights", "none", "--sizes",
            "32", "--tta", "none", "--poolings", "avg", "--heads", "logreg", "--grid",
            "logreg:C=0.1,1", "--cv", "2", "--inner-cv", "2", "--cache-dir", "none"]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "outer fold 1/2" in captured.err and "outer fold" not in captured.out
    assert captured.out.splitlines()[0].split() == [
        "configuration", "params", "score", "outer", "acc.", "dim", "ms/image",
    ]  # fmt: skip
    assert "nested-cv: mean outer-fold accuracy of the tuned pipeline" in captured.out


def test_compare_prints_a_table_that_fits_100_columns(image_folder, tmp_path, capsys):
    label = "MobileNetV2 with a label long enough to widen any table " * 2
    argv = ["compare", str(image_folder), "--backbones", f"VGG16:weights=none:label={label}",
            "--size", "32", "--heads", "logreg,knn", "--cv", "2", "--cache-dir", "none",
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(map(len, lines)) <= 100
    assert lines[0].split()[:4] == ["representation", "head", "accuracy", "macro"]
    # The labelled backbone cut short, then raw pixels (no random-weight row: the backbone
    # already has random weights); the parameters chosen, without the pipeline's prefixes.
    assert [line.split()[0] for line in lines[1:5]] == ["MobileNetV2", "MobileNetV2", "raw", "raw"]
    assert "..." in lines[1] and re.search(r"  C=\d", lines[1]) and "clf__" not in lines[1]
    assert lines[-1].startswith("nested-cv: accuracy mean±std over the outer folds")


def test_messages_name_the_commands_flags_not_python_parameters(image_folder, capsys):
    assert main(["evaluate", str(image_folder), "--test", str(image_folder), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "Both SOURCE and --test were given" in err and "--train, --test and" in err
    assert "source=" not in err and "test=" not in err
    assert main(["extract", str(image_folder), "--size", "16", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "--size 16x16 is too small for MobileNetV2" in err and "Pass --size 32 or more" in err
    assert "input_size" not in err


def test_an_undecodable_image_gets_the_fix_the_command_has(image_folder, tmp_path, capsys):
    (image_folder / "cat" / "broken.jpg").write_bytes(b"not an image")
    network = ["--backbone", "VGG16", "--weights", "none", "--size", "32", "--cache-dir", "none"]
    assert main(["extract", str(image_folder), *network, "--quiet"]) == 1
    assert "broken.jpg" in (err := capsys.readouterr().err) and "Pass --on-error skip" in err
    out = str(tmp_path / "m.featx")
    assert main(["train", str(image_folder), "--out", out, *network, "--quiet"]) == 1
    err = capsys.readouterr().err
    # train has no --on-error: it names the file and the fix, not an option it lacks.
    assert "broken.jpg" in err and "Remove or replace the file" in err
    assert "Pass --on-error" not in err and "on_error" not in err


def test_flag_wording_keeps_python_calls_and_parameters_the_command_lacks():
    from featx.cli import _parser, flag_wording

    parser = _parser().parse_args(["predict", "m.featx", "x.jpg"]).command_parser
    message = (
        "load it with load_classifier(path, trust_pickle=True) (featx predict --trust-pickle); "
        'pass on_error="skip", address=None or weights=None.'
    )
    assert flag_wording(message, parser) == (
        "load it with load_classifier(path, trust_pickle=True) (featx predict --trust-pickle); "
        "pass --on-error skip, address=None or weights=None."
    )
    extract = _parser().parse_args(["extract", "x"]).command_parser
    assert flag_wording("pass address=None or weights=None", extract) == (
        "pass no --address or --weights none"
    )


@pytest.mark.slow
def test_tensorflow_start_up_log_is_quiet_unless_verbose(image_folder):
    """TensorFlow 2.21 logs (absl, before its initialisation) oneDNN notices, 'Could not find
    cuda drivers' and 'failed call to cuInit' where there is no GPU: hidden, unless -v."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = str(ROOT)
    network = ["--backbone", "VGG16", "--weights", "none", "--size", "32", "--cache-dir", "none"]
    argv = [sys.executable, "-m", "featx.cli", "extract", str(image_folder), *network, "--quiet"]
    tf_log = re.compile(
        r"^([IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ |WARNING: All log messages before)", re.M
    )
    quiet = subprocess.run(argv, capture_output=True, text=True, env=env, check=True)
    assert "12 images -> 512-d embeddings" in quiet.stdout
    assert not tf_log.search(quiet.stderr), quiet.stderr
    verbose = subprocess.run([*argv, "-v"], capture_output=True, text=True, env=env, check=True)
    if not tf_log.search(verbose.stderr):
        pytest.skip("TensorFlow logs nothing at start-up on this machine")
    assert "12 images -> 512-d embeddings" in verbose.stdout
