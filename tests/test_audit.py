"""featx audit and featx similar on small synthetic folders: each finding kind planted."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featx.auditing import audit, duplicate_groups, label_issues, outlier_scores
from featx.backbones import RawPixels
from featx.cli import main
from featx.embeddings import Embeddings
from featx.hashes import image_hashes
from featx.similar import neighbours

NETWORK = ["--backbone", "MobileNetV2", "--weights", "none", "--size", "32"]
TINTS = {"red": (170, 40, 40), "blue": (40, 40, 170)}


def smooth(rng: np.random.Generator, tint: tuple[int, int, int], size: int = 96) -> Image.Image:
    """A smooth random picture (structure a perceptual hash can see), tinted by class."""
    low = rng.integers(0, 120, (6, 6, 3)).astype(np.uint8)
    picture = Image.fromarray(low).resize((size, size), Image.BICUBIC)
    pixels = np.clip(np.asarray(picture) + np.array(tint) // 2, 0, 255)
    return Image.fromarray(pixels.astype("uint8"))


def near_copy(picture: Image.Image) -> bytes:
    """A 90% centre crop, scaled by 0.8, re-saved at JPEG quality 75 (the planted kind)."""
    w, h = picture.size
    cw, ch = round(w * 0.9), round(h * 0.9)
    crop = picture.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch))
    crop = crop.resize((round(cw * 0.8), round(ch * 0.8)), Image.BILINEAR)
    buf = io.BytesIO()
    crop.save(buf, "JPEG", quality=75)
    return buf.getvalue()


def make_folder(root: Path, n: int = 18, seed: int = 0) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    for name, tint in TINTS.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            smooth(rng, tint).save(root / name / f"{name}{i}.png")
    planted = {}
    smooth(rng, TINTS["red"]).save(root / "blue" / "flipped.png")  # a red image filed as blue
    planted["flip"] = root / "blue" / "flipped.png"
    planted["exact"] = root / "red" / "copy-of-red0.png"
    planted["exact"].write_bytes((root / "red" / "red0.png").read_bytes())
    return planted


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def test_a_planted_flip_is_the_top_label_issue_with_the_right_suggestion(tmp_path, cache):
    planted = make_folder(tmp_path / "data")
    result = audit(tmp_path / "data", backbone=RawPixels(8), cv=3, cache_dir=cache)
    issues = result["label_issues"]
    assert issues, "the flipped image must be flagged"
    assert issues[0]["path"] == str(planted["flip"])
    assert (issues[0]["given"], issues[0]["suggested"]) == ("blue", "red")
    scores = [row["score"] for row in result.ranking]
    assert scores == sorted(scores, reverse=True)
    assert len(result.ranking) == len(result.to_frame()) == 2 * 18 + 2


def test_an_exact_copy_is_one_exact_group(tmp_path, cache):
    planted = make_folder(tmp_path / "data")
    result = audit(tmp_path / "data", backbone=RawPixels(8), cv=3, cache_dir=cache)
    exact = [g for g in result["duplicates"] if g["kind"] == "exact"]
    assert len(exact) == 1
    assert sorted(exact[0]["paths"]) == sorted(
        [str(planted["exact"]), str(tmp_path / "data" / "red" / "red0.png")]
    )
    assert exact[0]["cross_split"] is False and exact[0]["similarity"] == 1.0


def split_root(root: Path) -> Path:
    """train/ and test/ from one generator; a near copy of a training image in test."""
    rng = np.random.default_rng(1)
    for split, n in (("train", 16), ("test", 6)):
        for name, tint in TINTS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                smooth(rng, tint).save(root / split / name / f"{i}.png")
    return root


def test_a_near_copy_across_splits_is_a_leak_and_scored_apart(tmp_path, cache):
    root = split_root(tmp_path / "data")
    before = audit(root, backbone=RawPixels(8), cv=3, cache_dir=cache)
    assert before["counts"]["leaks"] == 0
    assert before["accuracy"]["leaked_test_rows"] == 0
    original = Image.open(root / "train" / "red" / "3.png")
    (root / "test" / "red" / "leak.jpg").write_bytes(near_copy(original))
    after = audit(root, backbone=RawPixels(8), cv=3, cache_dir=cache)
    near = [g for g in after["duplicates"] if g["kind"] == "near"]
    assert len(near) == 1 and near[0]["cross_split"] is True
    assert sorted(near[0]["splits"]) == ["test", "train"]
    assert str(root / "test" / "red" / "leak.jpg") in near[0]["paths"]
    accuracy = after["accuracy"]
    assert accuracy["leaked_test_rows"] == 1
    # The leak-free score leaves the leaked row out: computed over the 12 original rows.
    assert accuracy["leak_free"] == pytest.approx(before["accuracy"]["naive"])
    assert accuracy["leaks_worth"] == pytest.approx(accuracy["naive"] - accuracy["leak_free"])


def test_the_leak_free_score_moves_when_a_leak_is_planted_in_nested_cv():
    """Nested CV on embeddings: the leak-free protocol keeps duplicates on one side.

    Noise labels (no signal) plus many exact duplicates: a fold that sees one copy of an
    image in training predicts the other copy's label, so the naive score is far above
    chance and the leak-free one is not.
    """
    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 16)).astype(np.float32)
    labels = rng.integers(0, 2, 40)
    X = np.vstack([base, base])  # every image twice
    y = np.concatenate([labels, labels])
    data = Embeddings.from_arrays(X, np.array(["a", "b"])[y])
    result = audit(data, heads=["knn"], cv=4)
    assert result["counts"]["exact_groups"] == 40
    naive, free = result["accuracy"]["naive"], result["accuracy"]["leak_free"]
    assert naive > 0.9
    assert free < 0.75
    assert result["accuracy"]["leaks_worth"] == pytest.approx(naive - free)


def test_an_outlier_is_ranked_first(tmp_path):
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(size=(60, 8)) + 5, [[-5.0] * 4 + [5.0] * 4]])
    scores, flagged = outlier_scores(X, k=5)
    assert int(np.argmax(scores)) == 60
    assert flagged[0] == 60 and len(flagged) <= 3


def test_an_odd_image_in_a_folder_is_an_outlier(tmp_path, cache):
    make_folder(tmp_path / "data")
    odd = tmp_path / "data" / "red" / "odd.png"
    green = np.zeros((96, 96, 3), np.uint8)
    green[..., 1] = 255  # no red or blue at all: far from every picture of both classes
    Image.fromarray(green).save(odd)
    result = audit(tmp_path / "data", backbone=RawPixels(8), cv=3, cache_dir=cache)
    assert result["outliers"] and result["outliers"][0]["path"] == str(odd)


def test_a_second_audit_extracts_and_decodes_nothing(tmp_path, cache):
    make_folder(tmp_path / "data")
    audit(tmp_path / "data", backbone=RawPixels(8), cv=3, cache_dir=cache)
    paths = sorted(str(p) for p in (tmp_path / "data").rglob("*.png"))
    again = image_hashes(paths, cache_dir=cache)
    assert again.computed == 0 and all(k is not None for k in again.keys)
    from featx.extract import Extractor

    e = Extractor(RawPixels(8), cache_dir=cache, verbose=False).extract(tmp_path / "data")
    assert e.cache_misses == 0 and e.cache_hits == len(paths)


def test_json_contract_and_csv(tmp_path, cache, capsys):
    make_folder(tmp_path / "data")
    argv = ["audit", str(tmp_path / "data"), *NETWORK, "--cv", "3"]
    argv += ["--cache-dir", str(cache), "--json", "--quiet", "--csv", str(tmp_path / "tables")]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"label_issues", "duplicates", "outliers", "accuracy", "counts", "settings"} <= set(out)
    assert set(out["label_issues"][0]) >= {"path", "given", "suggested", "score"}
    assert set(out["duplicates"][0]) >= {"paths", "kind", "similarity", "cross_split"}
    assert out["duplicates"][0]["kind"] in ("exact", "near")
    assert set(out["accuracy"]) >= {"naive", "leak_free"}
    assert out["counts"]["label_issues"] == len(out["label_issues"])
    for name in ("label_issues", "duplicates", "outliers", "ranking"):
        assert (tmp_path / "tables" / f"{name}.csv").is_file()
    import pandas as pd

    table = pd.read_csv(tmp_path / "tables" / "label_issues.csv")
    assert table["path"].tolist() == [i["path"] for i in out["label_issues"]]


def test_unlabelled_and_one_class_sources_are_refused(tmp_path, cache):
    (tmp_path / "flat").mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        smooth(rng, TINTS["red"]).save(tmp_path / "flat" / f"{i}.png")
    with pytest.raises(ValueError, match="no labels"):
        audit(tmp_path / "flat", backbone=RawPixels(8), cache_dir=cache)
    one = tmp_path / "one" / "red"
    one.mkdir(parents=True)
    for i in range(6):
        smooth(rng, TINTS["red"]).save(one / f"{i}.png")
    with pytest.raises(ValueError, match="one class"):
        audit(tmp_path / "one", backbone=RawPixels(8), cache_dir=cache)
    with pytest.raises(ValueError, match="near_threshold"):
        audit(Embeddings.from_arrays(np.eye(4), ["a", "b"] * 2), near_threshold=99)


def test_similar_finds_the_near_copy_and_never_the_query_itself(tmp_path, cache, capsys):
    root = split_root(tmp_path / "data")
    query = root / "train" / "blue" / "2.png"
    copy = root / "test" / "blue" / "copy.jpg"
    copy.write_bytes(near_copy(Image.open(query)))
    result = neighbours(str(query), root, k=3, backbone=RawPixels(8), cache_dir=cache)
    hits = result["queries"][0]["neighbours"]
    assert len(hits) == 3
    assert str(query) not in [h["path"] for h in hits]
    assert hits[0]["path"] == str(copy) and hits[0]["label"] == "blue"
    sims = [h["similarity"] for h in hits]
    assert sims == sorted(sims, reverse=True)
    argv = ["similar", str(query), "--in", str(root / "test"), "-k", "2", *NETWORK]
    assert main([*argv, "--cache-dir", str(cache), "--json", "--quiet"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["queries"][0]["neighbours"][0]["path"] == str(copy)
    assert main([*argv, "--cache-dir", str(cache), "--json", "--quiet"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["queries"] == first["queries"]
    assert (
        again["settings"]["cache_misses"] == 0 and again["settings"]["cache_hits"] == 14
    )  # 13 searched, 1 query


def test_label_issues_and_groups_as_functions():
    y = np.array([0, 0, 0, 1, 1, 1])
    proba = np.array([[0.9, 0.1]] * 3 + [[0.1, 0.9]] * 2 + [[0.95, 0.05]])
    order, score, flagged = label_issues(y, proba)
    assert order[0] == 5 and flagged.tolist() == [False] * 5 + [True]
    assert score[5] == pytest.approx(0.95)
    keys = ["a", "b", "a", "c"]
    bits = np.zeros((4, 3, 8), np.uint8)
    bits[1, :, 0] = 0b1  # 1 bit from row 3's hashes
    bits[3, :, 0] = 0b11
    bits[0, :, 0] = bits[2, :, 0] = 0xFF
    groups = duplicate_groups(keys, bits, threshold=1)
    assert [(g[0], g[1]) for g in groups] == [([0, 2], "exact"), ([1, 3], "near")]
    assert duplicate_groups(keys, bits, threshold=0) == [([0, 2], "exact", 1.0)]


SCRIPT_LABEL = "<script>alert(1)</script>"
IMG_LABEL = "<img src=x onerror=alert(2)>"


def hostile_audit(root: Path, cache: Path):
    """A planted folder whose class names and one file name are HTML attacks, audited."""
    import pandas as pd

    planted = make_folder(root)
    hostile_file = root / "red" / "<img src=y onerror=alert(3)>.png"
    hostile_file.write_bytes((root / "red" / "red1.png").read_bytes())  # an exact copy
    odd = np.zeros((96, 96, 3), np.uint8)
    odd[..., 1] = 255
    Image.fromarray(odd).save(root / "red" / "odd.png")
    names = {"red": SCRIPT_LABEL, "blue": IMG_LABEL}
    table = pd.DataFrame(
        [{"path": str(p), "label": names[p.parent.name]} for p in sorted(root.rglob("*.png"))]
    )
    result = audit(table, backbone=RawPixels(8), cv=3, cache_dir=cache)
    return result, planted, hostile_file


def test_the_page_shows_each_finding_with_every_string_escaped(tmp_path, cache):
    from featx.audit_page import write_audit_html

    result, planted, hostile_file = hostile_audit(tmp_path / "data", cache)
    assert result["label_issues"][0]["path"] == str(planted["flip"])
    example = result.examples[0]
    assert example["path"] == str(planted["flip"])
    # Neighbours of the given class (blue, under its hostile name) and of the suggested.
    assert example["given"] and all("/blue/" in n["path"] for n in example["given"])
    assert example["suggested"] and all("/red/" in n["path"] for n in example["suggested"])
    assert str(planted["flip"]) not in [n["path"] for n in example["given"]]
    page = write_audit_html(result, tmp_path / "audit.html").read_text(encoding="utf-8")
    # Not one tag came from a user string: the page has no script and no stray img tag.
    assert "<script" not in page.lower()
    assert "<img src=x" not in page and "<img src=y" not in page
    assert html_escape(SCRIPT_LABEL) in page and html_escape(IMG_LABEL) in page
    assert html_escape(hostile_file.name) in page
    assert "Content-Security-Policy" in page
    # One row per shown issue, one per duplicate group, the outlier strip, both scores.
    assert page.count("class='fa-row fa-issue'") == len(result.examples) >= 1
    assert page.count("class='fa-row fa-group'") == len(result["duplicates"]) >= 1
    assert "id='featx-audit-outliers'" in page and html_escape("odd.png") in page
    assert "leak-free" in page and "naive" in page
    # Every image drawn is an inlined JPEG (the page works offline).
    sources = [part.split("'", 1)[0] for part in page.split("<img src='")[1:]]
    assert sources and all(s.startswith("data:image/jpeg;base64,") for s in sources)


def html_escape(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def test_audit_out_writes_the_page(tmp_path, cache, capsys):
    make_folder(tmp_path / "data")
    out = tmp_path / "pages" / "audit.html"
    argv = ["audit", str(tmp_path / "data"), *NETWORK, "--cv", "3", "--cache-dir", str(cache)]
    assert main([*argv, "--json", "--quiet", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["out"] == str(out)
    page = out.read_text(encoding="utf-8")
    assert "Label issues" in page and "Duplicates" in page and "Outliers" in page
