"""Sources: every accepted kind of input, through the Extractor, and a clear error for the rest."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import CountingBackbone, random_image
from PIL import Image

from featx import Extractor

CLASSES = ["cat", "dog", "fish"]


@pytest.fixture
def extractor(tmp_path: Path) -> Extractor:
    return Extractor(CountingBackbone(), cache_dir=tmp_path / "cache", verbose=False)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    return folder


def image_files(folder: Path) -> list[str]:
    """What featx should list for ``folder``: its image files in sorted order, as str."""
    return [str(folder / name) for name in sorted(os.listdir(folder))]


def pixels(n: int = 3, size: int = 16) -> np.ndarray:
    return np.stack([np.asarray(random_image(i, size=(size, size))) for i in range(n)])


# -- folders -----------------------------------------------------------------------------------


def test_class_folders_give_sorted_classes_labels_and_paths(extractor, image_folder):
    emb = extractor.extract(image_folder)
    assert emb.classes == CLASSES
    assert emb.y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert emb.paths == [p for name in CLASSES for p in image_files(image_folder / name)]
    assert emb.X.shape == (12, 6)
    assert emb.failed == []


def test_classes_are_sorted_by_name_not_by_creation(extractor, tmp_path):
    root = tmp_path / "zoo"
    for seed, name in enumerate(["zebra", "Yak", "ant"]):  # created out of order
        (root / name).mkdir(parents=True)
        random_image(seed).save(root / name / "img.png")
    emb = extractor.extract(root)
    assert emb.classes == ["Yak", "ant", "zebra"]
    assert [Path(p).parent.name for p in emb.paths] == emb.classes
    assert emb.y.tolist() == [0, 1, 2]


def test_hidden_folders_are_not_classes(extractor, image_folder):
    checkpoints = image_folder / ".ipynb_checkpoints"
    checkpoints.mkdir()
    random_image(99).save(checkpoints / "stale.jpg")
    emb = extractor.extract(image_folder)
    assert emb.classes == CLASSES
    assert len(emb) == 12


def test_class_folder_with_a_single_image(extractor, tmp_path):
    root = tmp_path / "root"
    (root / "many").mkdir(parents=True)
    (root / "one").mkdir()
    for i in range(3):
        random_image(i).save(root / "many" / f"{i}.jpg")
    random_image(9).save(root / "one" / "only.png")
    emb = extractor.extract(root)
    assert emb.classes == ["many", "one"]
    assert emb.y.tolist() == [0, 0, 0, 1]
    assert emb.paths[-1] == str(root / "one" / "only.png")


def test_images_in_nested_folders_belong_to_their_top_class(extractor, tmp_path):
    root = tmp_path / "root"
    (root / "cat" / "2024" / "june").mkdir(parents=True)
    (root / "dog").mkdir()
    random_image(1).save(root / "cat" / "2024" / "june" / "a.jpg")
    random_image(2).save(root / "cat" / "b.jpg")
    random_image(3).save(root / "dog" / "c.jpg")
    emb = extractor.extract(root)
    assert emb.y.tolist() == [0, 0, 1]
    # A folder's own files come before its subfolders' (as Keras lists them).
    assert emb.paths[:2] == [str(root / "cat" / "b.jpg"), str(root / "cat/2024/june/a.jpg")]


def test_folder_without_subfolders_is_unlabelled(extractor, image_folder):
    folder = image_folder / "dog"
    emb = extractor.extract(folder)
    assert emb.y is None
    assert emb.classes is None
    assert emb.paths == image_files(folder)


def test_files_other_than_images_are_ignored(extractor, photos):
    random_image(1).save(photos / "a.JPG", "JPEG")
    (photos / "notes.txt").write_text("not an image")
    (photos / ".hidden.jpg").write_bytes(b"")
    emb = extractor.extract(photos)
    assert emb.paths == [str(photos / "a.JPG")]
    assert emb.failed == []


def test_loose_images_beside_class_folders_warn_and_are_left_out(extractor, image_folder):
    random_image(50).save(image_folder / "stray.jpg")
    with pytest.warns(UserWarning, match=r"1 image\(s\) directly in .* are ignored") as record:
        emb = extractor.extract(image_folder)
    assert record[0].filename == __file__  # points at the caller's line, not inside featx
    assert str(image_folder / "stray.jpg") not in emb.paths
    assert len(emb) == 12


def test_unicode_file_names(extractor, photos):
    names = ["café_猫.jpg", "naïve ñ.png", "😀.jpeg"]
    for seed, name in enumerate(names):
        random_image(seed).save(photos / name)
    emb = extractor.extract(photos)
    assert emb.paths == [str(photos / name) for name in sorted(names)]
    assert emb.failed == []


def test_file_name_that_is_not_utf8(extractor, photos):
    random_image(1).save(photos / "good.jpg")
    raw = os.path.join(os.fsencode(photos), b"bad_\xff.jpg")
    fd = os.open(raw, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, (photos / "good.jpg").read_bytes())
    os.close(fd)
    emb = extractor.extract(photos)
    assert emb.failed == []
    assert emb.paths == [str(photos / "bad_\udcff.jpg"), str(photos / "good.jpg")]
    np.testing.assert_array_equal(emb.X[0], emb.X[1])  # same bytes, same vector


def test_symlink_loop_does_not_hang_or_repeat_images(extractor, image_folder):
    cats = image_folder / "cat"
    expected = image_files(cats)
    os.symlink(cats, cats / "loop")
    emb = extractor.extract(image_folder)
    assert emb.classes == CLASSES
    assert [p for p, label in zip(emb.paths, emb.y, strict=True) if label == 0] == expected
    assert len(emb) == 12


def test_symlink_up_to_the_root_does_not_pull_in_other_classes(extractor, image_folder):
    cats = image_folder / "cat"
    expected = image_files(cats)
    os.symlink(image_folder, cats / "up")
    os.symlink(image_folder.parent, cats / "further_up")
    emb = extractor.extract(image_folder)
    assert [p for p, label in zip(emb.paths, emb.y, strict=True) if label == 0] == expected
    assert len(emb) == 12


def test_empty_folder_is_a_clear_error(extractor, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"No images found in .*empty"):
        extractor.extract(tmp_path / "empty")


def test_class_folders_without_images_are_a_clear_error(extractor, tmp_path):
    (tmp_path / "root" / "cat").mkdir(parents=True)
    (tmp_path / "root" / "cat" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="No images found"):
        extractor.extract(tmp_path / "root")


def test_nonexistent_path_is_file_not_found(extractor, tmp_path):
    with pytest.raises(FileNotFoundError, match="is neither a folder nor a file"):
        extractor.extract(tmp_path / "no_such_folder")


# -- files and lists of files ------------------------------------------------------------------


@pytest.mark.parametrize("as_path", [str, Path], ids=["str", "Path"])
def test_list_of_paths(extractor, image_folder, as_path):
    files = image_files(image_folder / "fish")[::-1]  # the list's order is kept
    emb = extractor.extract([as_path(f) for f in files])
    assert emb.paths == files
    assert emb.y is None
    folder = extractor.extract(image_folder / "fish")
    np.testing.assert_array_equal(emb.X, folder.X[::-1])


def test_single_file(extractor, image_folder):
    path = image_folder / "cat" / "00.jpg"
    emb = extractor.extract(path)
    assert emb.paths == [str(path)]
    assert emb.X.shape == (1, 6)


def test_mixed_list_is_a_type_error(extractor, image_folder):
    with pytest.raises(TypeError, match="The list mixes Image, str"):
        extractor.extract([str(image_folder / "cat" / "00.jpg"), random_image(1)])


def test_list_of_unsupported_items_is_a_type_error(extractor):
    with pytest.raises(TypeError, match="The list holds int items"):
        extractor.extract([1, 2, 3])


def test_empty_list_is_a_clear_error(extractor):
    with pytest.raises(ValueError, match=r"The source \[\] holds no images"):
        extractor.extract([])


def test_unsupported_source_is_a_type_error(extractor):
    with pytest.raises(TypeError, match=r"is not understood\. Expected a folder"):
        extractor.extract(42)


# -- DataFrames --------------------------------------------------------------------------------


def test_dataframe_with_path_and_label_columns(extractor, image_folder):
    files = image_files(image_folder / "cat")
    df = pd.DataFrame({"path": files, "label": ["tabby", "siamese", "tabby", "manx"]})
    emb = extractor.extract(df)
    assert emb.paths == files
    assert emb.classes == ["manx", "siamese", "tabby"]
    assert emb.y.tolist() == [2, 1, 2, 0]


def test_dataframe_with_custom_column_names(extractor, image_folder):
    files = image_files(image_folder / "dog")
    df = pd.DataFrame({"file": files, "breed": [3, 1, 3, 1]})
    emb = extractor.extract(df, path_column="file", label_column="breed")
    assert emb.paths == files
    assert emb.classes == ["1", "3"]
    assert emb.y.tolist() == [1, 0, 1, 0]


def test_dataframe_without_a_label_column_is_unlabelled(extractor, image_folder):
    df = pd.DataFrame({"path": image_files(image_folder / "dog"), "size": [1, 2, 3, 4]})
    emb = extractor.extract(df)
    assert emb.y is None
    assert len(emb) == 4


def test_dataframe_missing_the_path_column_lists_its_columns(extractor):
    df = pd.DataFrame({"file": ["a.jpg"], "label": ["cat"]})
    with pytest.raises(
        ValueError, match=r"no path column 'path'; its columns are \['file', 'label'\]"
    ):
        extractor.extract(df)


def test_dataframe_missing_the_named_label_column_lists_its_columns(extractor, image_folder):
    df = pd.DataFrame({"path": image_files(image_folder / "dog")})
    with pytest.raises(ValueError, match=r"no label column 'breed'; its columns are \['path'\]"):
        extractor.extract(df, label_column="breed")


def test_dataframe_with_missing_paths_names_the_row(extractor, image_folder):
    df = pd.DataFrame({"path": [str(image_folder / "cat" / "00.jpg"), None]}, index=[7, 8])
    with pytest.raises(ValueError, match=r"1 missing value.*the first at index 8\."):
        extractor.extract(df)


# -- arrays and PIL images ---------------------------------------------------------------------


def test_uint8_array(extractor):
    images = pixels(3)
    emb = extractor.extract(images)
    assert emb.X.shape == (3, 6)
    assert emb.paths is None
    assert emb.index.tolist() == [0, 1, 2]
    expected_means = images.reshape(3, -1, 3).mean(axis=1)
    np.testing.assert_allclose(emb.X[:, :3], expected_means, rtol=1e-5)


def test_float_array_in_0_255_embeds_like_uint8(extractor):
    images = pixels(3)
    emb = extractor.extract(images.astype(np.float32))
    np.testing.assert_allclose(emb.X, extractor.extract(images).X, rtol=1e-6)


def test_float_array_of_another_size_is_resized_like_uint8(extractor):
    images = pixels(2, size=40)
    emb = extractor.extract(images.astype(np.float64))
    np.testing.assert_allclose(emb.X, extractor.extract(images).X, atol=1.0)


def test_float_array_in_0_1_warns(extractor):
    unit = pixels(2).astype(np.float32) / 255
    with pytest.warns(UserWarning, match="all values in \\[0, 1\\].*Multiply by 255") as record:
        extractor.extract(unit)
    assert record[0].filename == __file__


def test_grayscale_array_embeds_as_three_equal_channels(extractor):
    gray = pixels(2)[..., 0]
    emb = extractor.extract(gray)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    np.testing.assert_array_equal(emb.X, extractor.extract(rgb).X)


def test_list_of_pil_images_embeds_like_the_array(extractor):
    images = pixels(3)
    emb = extractor.extract([Image.fromarray(a) for a in images])
    assert emb.paths is None
    np.testing.assert_array_equal(emb.X, extractor.extract(images).X)


def test_labels_for_an_array(extractor):
    emb = extractor.extract(pixels(3), labels=["dog", "cat", "dog"])
    assert emb.classes == ["cat", "dog"]
    assert emb.y.tolist() == [1, 0, 1]


def test_labels_of_the_wrong_length(extractor):
    with pytest.raises(ValueError, match="labels has 2 entries for 3 images"):
        extractor.extract(pixels(3), labels=["a", "b"])


def test_labels_for_a_source_that_has_labels(extractor, image_folder):
    with pytest.raises(ValueError, match="the source already has labels"):
        extractor.extract(image_folder, labels=["a"] * 12)


@pytest.mark.parametrize(
    "shape",
    [(2, 16, 16, 4), (2, 16, 16, 2), (16,), (2, 2, 16, 16, 3)],
    ids=["rgba", "two-channels", "1d", "5d"],
)
def test_array_of_the_wrong_shape(extractor, shape):
    with pytest.raises(ValueError, match=r"must have shape \(N, H, W, 3\)"):
        extractor.extract(np.zeros(shape, np.uint8))


def test_single_image_array_is_not_mistaken_for_a_batch(extractor):
    with pytest.raises(ValueError, match=r"looks like one image.*array\[None\]"):
        extractor.extract(pixels(1)[0])
