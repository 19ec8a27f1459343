"""featx.tune: grouped copies never straddle a split; the search reports every configuration."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import MOBILENET_WEIGHTS, SHARED, CountingBackbone, random_image, require_shared

from featx.cli import main
from featx.splits import grouped_folds, stack_copies
from featx.tuning import tune

tune_module = importlib.import_module("featx.tuning")

SPACE = {
    "input_size": [16],
    "tta": [None, "flip"],
    "pooling": ["avg"],
    "augment": [None, 2],
    "head": ["logreg"],
}
GRIDS = {"logreg": {"clf__C": [0.1, 1.0]}}


def _folder(root: Path, n: int) -> Path:
    for c, name in enumerate(["cat", "dog", "fish"]):
        (root / name).mkdir(parents=True)
        for i in range(n):
            random_image(100 * c + i).save(root / name / f"{i:02d}.png")
    return root


@pytest.fixture
def flat_root(tmp_path: Path) -> Path:
    return _folder(tmp_path / "flat", 6)


@pytest.fixture
def split_root(tmp_path: Path) -> Path:
    root = tmp_path / "split"
    for split, n in [("train", 6), ("validation", 3), ("test", 3)]:
        _folder(root / split, n)
        for path in (root / split).rglob("*.png"):  # distinct images in every split
            random_image(hash((split, path.name, path.parent.name)) % 10_000).save(path)
    return root


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_splits", [2, 3, 5])
def test_copies_of_an_image_never_land_on_both_sides_of_a_split(seed, n_splits):
    rng = np.random.default_rng(seed)
    n = 40
    X, y = rng.normal(size=(n, 4)), rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    copies = [X + rng.normal(size=X.shape) for _ in range(3)]
    rows = rng.permutation(n)[:30]  # e.g. an outer training fold
    Xs, ys, groups = stack_copies(X, y, copies, rows)
    assert len(Xs) == 4 * len(rows) and set(groups) == set(rows)
    validated = []
    for train, val in grouped_folds(ys, groups, n_splits, seed):
        assert not set(groups[train]) & set(groups[val])
        assert np.all(val < len(rows))  # only originals are scored
        assert len(val) == len(set(groups[val]))
        validated.extend(groups[val])
    assert sorted(validated) == sorted(rows)  # each original is validated exactly once


def _record(monkeypatch) -> list[tuple[str, set, set]]:
    """Every prediction: (split, original rows predicted, original rows the model was fitted on)."""
    from featx.learning import _Fitter

    scored: list[tuple[str, set, set]] = []
    real_data_for = _Fitter.data_for

    def data_for(self, cand, rows, held):
        trained_on = {(s, int(r)) for s, index in rows.items() for r in index}
        for split, index in held.items():
            scored.append((split, {(split, int(r)) for r in index}, trained_on))
        return real_data_for(self, cand, rows, held)

    monkeypatch.setattr(_Fitter, "data_for", data_for)
    return scored


def test_nested_search_never_scores_an_image_it_trained_on(flat_root, tmp_path, monkeypatch):
    scored = _record(monkeypatch)
    found = tune(
        flat_root,
        backbone=CountingBackbone(),
        space=SPACE,
        grids=GRIDS,
        cv=2,
        inner_cv=2,
        cache_dir=tmp_path / "cache",
    )
    assert scored
    for _, rows, trained_on in scored:
        assert not rows & trained_on  # copies are fitted with their original's rows only
    assert found.protocol == "nested-cv" and len(found.folds) == 2
    assert found.results["augment"].dropna().tolist() == [2, 2]


def test_fixed_splits_touch_test_only_for_the_winner_and_baseline(
    split_root, tmp_path, monkeypatch
):
    scored = _record(monkeypatch)
    found = tune(
        split_root,
        backbone=CountingBackbone(),
        space=SPACE,
        grids=GRIDS,
        cache_dir=tmp_path / "cache",
    )
    on_test = [s for s in scored if s[0] == "test"]
    assert 1 <= len(on_test) <= 2
    assert all(("test", 0) not in trained_on for _, _, trained_on in scored)
    assert found.protocol == "train-validation-test"
    assert found.results["score"].notna().all()


def _small_tune(root: Path, backbone: CountingBackbone, cache: Path):
    return tune(
        root, backbone=backbone, space=SPACE, grids=GRIDS, cv=2, inner_cv=2, cache_dir=cache
    )


def test_results_list_every_configuration_with_its_cost(flat_root, tmp_path):
    backbone = CountingBackbone()
    found = _small_tune(flat_root, backbone, tmp_path / "cache")
    table = found.results
    assert len(table) == 4  # 2 TTA settings x 2 augmentation settings x 1 head
    assert {"name", "score", "outer_accuracy", "dim", "ms_per_image", "params"} <= set(table)
    assert table["baseline"].tolist() == [True, False, False, False]
    assert table["best"].sum() == 1
    assert (table["ms_per_image"] > 0).all()
    # Copies are embedded too: a training image costs more to embed.
    costs = dict(zip(table["name"], table["ms_per_image"], strict=True))
    assert costs["16px avg tta=none aug=2 logreg"] > costs["16px avg tta=none logreg"]
    summary = found.summary()
    json.dumps(summary)
    assert summary["gain"] == pytest.approx(found.accuracy - found.baseline_accuracy)
    image = str(next((flat_root / "dog").iterdir()))
    assert found.pipeline.predict([image])[0] in {"cat", "dog", "fish"}
    # A second run reads every view and copy from the cache.
    seen = len(backbone.seen)
    _small_tune(flat_root, backbone, tmp_path / "cache")
    assert len(backbone.seen) == seen


def test_an_unknown_dimension_is_refused(flat_root):
    with pytest.raises(ValueError, match="unknown dimension"):
        tune(flat_root, backbone=CountingBackbone(), space={"size": [160]}, cache_dir=None)
    with pytest.raises(ValueError, match="tta="):
        tune(flat_root, backbone=CountingBackbone(), space={"tta": ["mirror"]}, cache_dir=None)


def test_a_grid_takes_bare_names_and_a_wrong_key_fails_before_any_extraction(flat_root):
    space = {"input_size": [16], "tta": [None], "pooling": ["avg"], "head": ["logreg"]}
    bare = tune(
        flat_root,
        backbone=CountingBackbone(),
        space=space,
        cv=2,
        inner_cv=2,
        grids={"logreg": {"C": [0.5]}},
        cache_dir=None,
    )
    assert json.loads(bare.results["params"].iloc[0]) == {"clf__C": [0.5, 0.5]}
    backbone = CountingBackbone()
    with pytest.raises(ValueError, match=r"'alpha'.*Expected one of: .*clf__C"):
        tune(
            flat_root,
            backbone=backbone,
            space=space,
            grids={"logreg": {"alpha": [1.0]}},
            cache_dir=None,
        )
    assert backbone.seen == []


def test_cli_tune_prints_one_json_object(flat_root, tmp_path, capsys):
    status = main(
        [
            "tune",
            str(flat_root),
            "--backbone",
            "VGG16",
            "--weights",
            "none",
            "--sizes",
            "32",
            "--tta",
            "none,flip",
            "--poolings",
            "avg",
            "--heads",
            "logreg",
            "--grid",
            "logreg:C=0.1",
            "--cv",
            "2",
            "--inner-cv",
            "2",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--quiet",
            "--json",
        ]
    )
    assert status == 0
    result = json.loads(capsys.readouterr().out)
    assert result["protocol"] == "nested-cv"
    assert [row["tta"] for row in result["results"]] == [None, "flip"]
    assert {"accuracy", "baseline_accuracy", "best"} <= set(result)


@pytest.mark.shared
@pytest.mark.slow
def test_tune_on_a_slice_of_intel6_with_the_shared_weights(tmp_path):
    """Real weights end to end, on 8 photos per class: views, scales and copies all run,
    the copies are real augmentations, and every configuration scores far above chance."""
    require_shared()
    root = tmp_path / "intel6-slice"
    for folder in sorted((SHARED / "datasets" / "intel6").iterdir()):
        (root / folder.name).mkdir(parents=True)
        for path in sorted(folder.glob("*.jpg"))[:8]:
            (root / folder.name / path.name).symlink_to(path)
    space = {
        "input_size": [96, [96, 128]],
        "tta": [None, "flip"],
        "pooling": ["avg"],
        "augment": [None, 1],
        "head": ["logreg"],
    }
    found = tune(
        root,
        weights=MOBILENET_WEIGHTS,
        space=space,
        cv=2,
        inner_cv=2,
        grids={"logreg": {"clf__C": [0.01]}},
        cache_dir=tmp_path / "cache",
    )
    table = found.results
    assert len(table) == 8
    assert (table["outer_accuracy"] > 0.5).all()  # chance is 1/6
    assert found.accuracy > 0.5
    assert set(table["dim"]) == {1280, 2560}


def test_cli_evaluate_with_views_and_two_sizes(image_folder, tmp_path, capsys):
    argv = [
        "evaluate",
        str(image_folder),
        "--backbone",
        "VGG16",
        "--weights",
        "none",
        "--size",
        "32,48",
        "--pooling",
        "avg+max",
        "--tta",
        "flip",
        "--cv",
        "2",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--quiet",
        "--json",
    ]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert (result["input_size"], result["tta"], result["dim"]) == ("32+48", "flip", 2048)
