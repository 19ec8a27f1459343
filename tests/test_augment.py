"""Views, test-time augmentation, seeded copies, multi-scale and avg+max pooling."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CountingBackbone
from sklearn.linear_model import LogisticRegression

from featx import EmbeddingTransformer, Extractor
from featx.augment import AugmentPolicy, Crop, Flip, resolve_augment, resolve_tta
from featx.combine import CombinedExtractor, expand_members


def test_flip_is_the_mirror_and_its_own_inverse():
    image = np.random.default_rng(0).integers(0, 255, (8, 6, 3)).astype(np.uint8)
    flipped = Flip().apply(image, "k")
    assert np.array_equal(flipped[:, 0], image[:, -1])
    assert np.array_equal(Flip().apply(flipped, "k"), image)


def test_a_full_crop_changes_nothing():
    image = np.random.default_rng(1).integers(0, 255, (10, 10, 3)).astype(np.float32)
    assert np.allclose(Crop(1.0).apply(image, "k"), image, atol=1e-3)


def test_copies_are_seeded_per_image_copy_and_policy():
    image = np.random.default_rng(2).integers(0, 255, (24, 24, 3)).astype(np.uint8)
    first, second = AugmentPolicy(copies=2).views()
    again = AugmentPolicy(copies=5).views()[0]  # copy i is copy i, however many are made
    assert np.array_equal(first.apply(image, "a"), again.apply(image, "a"))
    assert not np.array_equal(first.apply(image, "a"), second.apply(image, "a"))
    assert not np.array_equal(first.apply(image, "a"), first.apply(image, "b"))
    other_seed = AugmentPolicy(copies=1, seed=1).views()[0]
    assert not np.array_equal(first.apply(image, "a"), other_seed.apply(image, "a"))
    assert first.apply(image, "a").shape == image.shape


def test_bad_settings_say_what_is_expected():
    with pytest.raises(ValueError, match="tta='mirror'"):
        resolve_tta("mirror")
    with pytest.raises(ValueError, match="copies=0"):
        AugmentPolicy(copies=0)
    with pytest.raises(ValueError, match="rotation"):
        AugmentPolicy(rotation=400)
    with pytest.raises(ValueError, match="AugmentPolicy"):
        resolve_augment({"flips": True})
    with pytest.raises(ValueError, match="tta_combine"):
        CombinedExtractor(["MobileNetV2"], tta_combine="max", cache_dir=None)


def test_each_view_is_a_cache_entry_computed_once(image_folder, tmp_path):
    backbone = CountingBackbone()
    combined = CombinedExtractor([backbone], tta="flip", cache_dir=tmp_path / "c", verbose=False)
    first = combined.extract(image_folder)
    assert len(backbone.seen) == 2 * 12  # every image, and its mirror
    second = CombinedExtractor([backbone], tta="flip", cache_dir=tmp_path / "c").extract(
        image_folder
    )
    assert len(backbone.seen) == 2 * 12  # all read back from the cache
    assert second.cache_hits == 24
    np.testing.assert_array_equal(first.X, second.X)
    # The unchanged view is the plain extraction: same fingerprint, same cache entry.
    plain = Extractor(backbone, cache_dir=tmp_path / "c", verbose=False).extract(image_folder)
    assert plain.cache_misses == 0
    mirror = Extractor(backbone, cache_dir=tmp_path / "c", view=Flip(), verbose=False)
    assert mirror.fingerprint != plain.fingerprint
    np.testing.assert_allclose(first.X, (plain.X + mirror.extract(image_folder).X) / 2, rtol=1e-6)


def test_concatenated_views_and_copies_keep_rows_aligned(image_folder, tmp_path):
    backbone = CountingBackbone()
    combined = CombinedExtractor(
        [backbone], tta="flip", tta_combine="concat", augment=2, cache_dir=tmp_path
    )
    originals = combined.extract(image_folder)
    copies = combined.extract_copies(image_folder)
    assert originals.X.shape == (12, 12) and combined.dim == 12
    assert [c.X.shape for c in copies] == [(12, 12), (12, 12)]
    assert all(np.array_equal(c.y, originals.y) for c in copies)
    assert not np.allclose(copies[0].X, originals.X)
    seen = len(backbone.seen)
    CombinedExtractor(
        [backbone], tta="flip", tta_combine="concat", augment=2, cache_dir=tmp_path
    ).extract_copies(image_folder)
    assert len(backbone.seen) == seen  # copies are cached, keyed by policy and copy index


def test_avg_max_pooling_is_both_poolings_of_one_pass():
    images = np.random.default_rng(3).integers(0, 255, (2, 40, 40, 3), dtype=np.uint8)

    def embed(pooling):
        ex = Extractor(
            "MobileNetV2",
            weights=None,
            input_size=32,
            pooling=pooling,
            cache_dir=None,
            verbose=False,
        )
        return ex.extract(images).X

    both = embed("avg+max")
    assert both.shape == (2, 2560)
    np.testing.assert_array_equal(both[:, :1280], embed("avg"))
    np.testing.assert_array_equal(both[:, 1280:], embed("max"))


def test_transformer_concatenates_sizes_and_averages_views():
    images = np.random.default_rng(4).integers(0, 255, (3, 48, 48, 3), dtype=np.uint8)
    embed = EmbeddingTransformer(
        "MobileNetV2", weights=None, input_size=[32, 48], tta="flip", cache_dir=None
    ).fit(images)
    X = embed.transform(images)
    assert X.shape == (3, 2560) == (3, embed.n_features_out_)
    single = EmbeddingTransformer(
        "MobileNetV2", weights=None, input_size=32, tta="flip", cache_dir=None
    ).fit(images)
    np.testing.assert_allclose(X[:, :1280], single.transform(images), rtol=1e-5, atol=1e-6)
    assert embed.fingerprint_ != single.fingerprint_


def test_members_expand_sizes_and_layers():
    members = expand_members("MobileNetV2", input_size=[160, 224], layer=[None, "block_13"])
    # Each member is one network at one size and layer (a BackboneConfig).
    assert [(m.input_size, m.layer) for m in members] == [
        (((160, 160),), (None,)),
        (((160, 160),), ("block_13",)),
        (((224, 224),), (None,)),
        (((224, 224),), ("block_13",)),
    ]
    assert all(m.is_single for m in members)
    assert expand_members("MobileNetV2", input_size=(160, 120))[0].input_size == ((160, 120),)


def test_costs_report_dimension_and_time_per_member(image_folder, tmp_path):
    combined = CombinedExtractor(
        [CountingBackbone(16), CountingBackbone(24)], tta="flip", cache_dir=tmp_path
    )
    assert [row["ms_per_image"] for row in combined.costs()] == [None, None]
    combined.extract(image_folder)
    costs = combined.costs()
    assert [row["dim"] for row in costs] == [6, 6]
    assert all(row["ms_per_image"] > 0 for row in costs)
    assert combined.ms_per_image() == pytest.approx(sum(r["ms_per_image"] for r in costs))


def test_evaluate_and_compare_report_views_and_sizes(image_folder, tmp_path):
    from featx.evaluation import compare, evaluate

    result = evaluate(
        image_folder, backbone=CountingBackbone(), tta="flip", cv=2, grid={}, cache_dir=tmp_path
    )
    assert result["tta"] == "flip" and result["members"] == "counting, tta=flip"
    table = compare(
        image_folder,
        backbones=["MobileNetV2"],
        weights=None,
        input_size=[32, 48],
        pooling="avg+max",
        heads=["logreg"],
        grids={"logreg": {}},
        baselines=False,
        tta="flip",
        cv=2,
        cache_dir=tmp_path,
    ).table
    row = table.iloc[0]
    assert row["input_size"] == "32+48" and row["tta"] == "flip" and row["dim"] == 5120
    assert row["ms_per_image"] > 0


def test_compare_concatenates_several_backbones_in_one_row(image_folder, tmp_path):
    from featx.evaluation import compare

    entry = {"backbone": ["MobileNetV2", "VGG16"], "weights": None, "input_size": 32}
    table = compare(
        image_folder,
        backbones=[entry],
        heads=["logreg"],
        grids={"logreg": {}},
        baselines=False,
        cv=2,
        cache_dir=tmp_path,
    ).table
    row = table.iloc[0]
    assert row["backbone"] == "MobileNetV2 (random weights) + VGG16 (random weights)"
    assert row["dim"] == 1280 + 512 and row["ms_per_image"] > 0


class _GroupRecordingHead(LogisticRegression):
    """Records, per fit, the images (groups) it trained on, and what each predict overlaps."""

    group_of: dict[bytes, int] = {}  # noqa: RUF012  (shared by sklearn's clones)
    fits: list[list[int]] = []  # noqa: RUF012
    overlaps: list[int] = []  # noqa: RUF012

    def fit(self, X, y, sample_weight=None):
        self.groups_ = [self.group_of[row.tobytes()] for row in np.asarray(X)]
        _GroupRecordingHead.fits.append(self.groups_)
        return super().fit(X, y, sample_weight)

    def predict(self, X):
        scored = {self.group_of[row.tobytes()] for row in np.asarray(X)}
        _GroupRecordingHead.overlaps.append(len(scored & set(self.groups_)))
        return super().predict(X)


def test_evaluate_with_copies_never_scores_an_image_whose_copy_it_trained_on(image_folder):
    combined = CombinedExtractor([CountingBackbone()], augment=2, cache_dir=None)
    views = [combined.extract(image_folder), *combined.extract_copies(image_folder)]
    _GroupRecordingHead.group_of = {row.tobytes(): i for e in views for i, row in enumerate(e.X)}
    _GroupRecordingHead.fits, _GroupRecordingHead.overlaps = [], []
    from featx.evaluation import evaluate

    result = evaluate(
        image_folder,
        backbone=CountingBackbone(),
        augment=2,
        cv=2,
        head=_GroupRecordingHead(max_iter=1000),
        grid={"C": [0.1, 1.0]},
        cache_dir=None,
    )
    assert result["augment"] == 2 and result["n_test"] == 12
    # Every fit holds each of its images three times: the original and two copies.
    assert all(len(fit) == 3 * len(set(fit)) for fit in _GroupRecordingHead.fits)
    assert _GroupRecordingHead.overlaps and not any(_GroupRecordingHead.overlaps)
