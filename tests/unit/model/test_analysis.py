"""The data analysis (``weather-al analyze``) against planted faults, its report in a real browser, and ``tune``.

The planted set: synthetic scenes at 160x90 without label noise, then 20 unreadable files of many
kinds, 30 exact copies, 30 near copies (re-encoded, slightly cropped, brightness-jittered), 25 flipped
labels, 10 images from another world (noise, plain colours, text cards), 40 images annotated twice
(6 with a disagreement) and 5 unusable labels. The analysis must find every unreadable file and exact
copy, 80% of the near copies, 60% of the flipped labels among its top 100 suspects and 7 of the
outliers among its top 30.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance
from tiny_data import write_tiny_set

from backend.cli import main
from backend.labelstudio import export as backend_export
from model.analysis.agreement import annotator_agreement, disagreements
from model.analysis.duplicates import MAX_HAMMING
from model.analysis.image_stats import describe
from model.analysis.inputs import MISSING_HEAD, OUTSIDE_CONFIG, SEVERAL_VALUES
from model.analysis.report import SECTIONS
from model.schema import LabelSchema
from model.sim.scenes import HEADS, generate
from model.training.trainer import TrainConfig
from model.training.tune import SearchSpace

HEAD_NAMES = tuple(HEADS)
CHROMIUM = Path("/usr/bin/chromium")


@dataclass
class Planted:
    manifest: Path
    corrupt: set[str] = field(default_factory=set)
    exact: dict[str, str] = field(default_factory=dict)  # copy -> original
    near: dict[str, str] = field(default_factory=dict)
    flipped: set[str] = field(default_factory=set)
    outliers: set[str] = field(default_factory=set)
    twice: set[str] = field(default_factory=set)
    disagreeing: set[str] = field(default_factory=set)
    issues: dict[str, str] = field(default_factory=dict)  # image -> issue kind


def _near_copy(image: Image.Image, kind: int, rng: np.random.Generator) -> Image.Image:
    """A re-encoded copy that is slightly cropped (kind 0), brightness-jittered (1) or unchanged (2)."""
    w, h = image.size
    if kind == 0:
        dx, dy = int(w * rng.uniform(0.02, 0.06)), int(h * rng.uniform(0.02, 0.06))
        return image.crop((dx, dy, w - dx, h - dy)).resize((w, h), Image.BILINEAR)
    if kind == 1:
        return ImageEnhance.Brightness(image).enhance(float(rng.choice([0.85, 0.9, 1.1, 1.15])))
    return image


def _alien(k: int, rng: np.random.Generator) -> Image.Image:
    """Not a street scene: sensor noise, a plain colour, or a text card."""
    if k < 4:
        return Image.fromarray(rng.integers(0, 256, (90, 160, 3), dtype=np.uint8))
    if k < 7:
        return Image.new("RGB", (160, 90), tuple(int(c) for c in rng.integers(0, 256, 3)))
    card = Image.new("RGB", (160, 90), "white")
    draw = ImageDraw.Draw(card)
    for line in range(4):
        draw.text((6, 6 + 20 * line), f"INVOICE {rng.integers(10**6)} total {rng.integers(999)}", fill="black")
    return card


def _corrupt_files(root: Path, rows: list[dict[str, str]], rng: np.random.Generator) -> list[tuple[str, bytes | None]]:
    """20 unusable files: truncated, empty, text, random bytes, damaged PNG data, decompression bombs, missing."""
    out: list[tuple[str, bytes | None]] = []
    for k in range(5):
        data = (root / rows[k]["image"]).read_bytes()
        out.append((f"images/truncated_{k}.jpg", data[: len(data) // (k + 2)]))
    out += [(f"images/empty_{k}.jpg", b"") for k in range(3)]
    out += [(f"images/text_{k}.jpg", b"this is not an image\n" * 20) for k in range(3)]
    out += [(f"images/random_{k}.jpg", rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()) for k in range(3)]
    for k in range(2):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (90, 160, 3), dtype=np.uint8)).save(buffer, "PNG")
        data = bytearray(buffer.getvalue())
        data[len(data) // 2 : len(data) // 2 + 200] = bytes(200)
        out.append((f"images/badpng_{k}.png", bytes(data)))
    for k in range(2):
        buffer = io.BytesIO()
        Image.new("1", (20000 + k, 20000)).save(buffer, "PNG")  # 400 Mpx in a few KB
        out.append((f"images/bomb_{k}.png", buffer.getvalue()))
    out += [(f"images/missing_{k}.jpg", None) for k in range(2)]
    return out


def plant_faults(root: Path, n_base: int = 420, n_unlabeled: int = 80, seed: int = 3) -> Planted:
    rng = np.random.default_rng(seed)
    base = generate(root, n_base, seed=seed, label_noise=0.0, size=(160, 90), progress=False)
    with base.manifest_path.open() as fh:
        rows = [dict(r, annotator="a1") for r in csv.DictReader(fh)]
    for r in rows[n_base - n_unlabeled :]:
        r.update(timeofday="", weather="", annotator="")
    labeled = range(n_base - n_unlabeled)
    order = rng.permutation(n_base)
    exact_src, near_src = order[:30], order[30:60]
    rest = [i for i in rng.permutation(labeled) if i not in set(order[:60])]
    flip_idx, twice_idx, issue_idx = rest[:25], rest[25:65], rest[65:70]
    planted = Planted(manifest=root / "analysis.csv")
    extra: list[dict[str, str]] = []
    for k, i in enumerate(exact_src):
        name = f"images/exact_{k:02d}.jpg"
        shutil.copyfile(root / rows[i]["image"], root / name)
        extra.append(dict(rows[i], image=name))
        planted.exact[name] = rows[i]["image"]
    for k, i in enumerate(near_src):
        name = f"images/near_{k:02d}.jpg"
        with Image.open(root / rows[i]["image"]) as src:
            _near_copy(src.convert("RGB"), k % 3, rng).save(root / name, quality=int(rng.integers(60, 90)))
        extra.append(
            dict(rows[i], image=name) if k % 2 == 0 else dict(image=name, timeofday="", weather="", annotator="")
        )
        planted.near[name] = rows[i]["image"]
    for i in flip_idx:
        head = HEAD_NAMES[int(rng.integers(2))]
        rows[i][head] = str(rng.choice([c for c in HEADS[head] if c != rows[i][head]]))
        planted.flipped.add(rows[i]["image"])
    for n, i in enumerate(twice_idx):
        second = dict(rows[i], annotator="a2")
        if n < 6:
            head = HEAD_NAMES[n % 2]
            second[head] = next(c for c in HEADS[head] if c != rows[i][head])
            planted.disagreeing.add(rows[i]["image"])
        extra.append(second)
        planted.twice.add(rows[i]["image"])
    for n, i in enumerate(issue_idx):
        if n < 3:
            rows[i]["weather"] = "fog"
            planted.issues[rows[i]["image"]] = OUTSIDE_CONFIG
        else:
            rows[i]["timeofday"] = ""
            planted.issues[rows[i]["image"]] = MISSING_HEAD
    for k in range(10):
        name = f"images/outlier_{k:02d}.{'png' if k % 3 else 'jpg'}"
        _alien(k, rng).save(root / name)
        extra.append(
            {
                "image": name,
                "timeofday": str(rng.choice(HEADS["timeofday"])),
                "weather": str(rng.choice(HEADS["weather"])),
                "annotator": "a1",
            }
        )
        planted.outliers.add(name)
    for name, data in _corrupt_files(root, rows, rng):
        if data is not None:
            (root / name).write_bytes(data)
        extra.append({"image": name, "timeofday": "day", "weather": "clear", "annotator": "a1"})
        planted.corrupt.add(name)
    all_rows = rows + extra
    with planted.manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, ["image", "timeofday", "weather", "annotator"])
        writer.writeheader()
        writer.writerows(all_rows[i] for i in rng.permutation(len(all_rows)))
    return planted


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Planted, dict, Path]:
    root = tmp_path_factory.mktemp("planted")
    planted = plant_faults(root / "data")
    out = root / "analysis"
    assert main(["analyze", "--data", str(planted.manifest), "--out", str(out)]) == 0
    return planted, json.loads((out / "summary.json").read_text()), out / "report.html"


def test_every_unreadable_file_is_found_with_its_reason(planted_run) -> None:
    planted, summary, _ = planted_run
    found = {u["key"]: u["reason"] for u in summary["unreadable"]}
    assert set(found) == planted.corrupt
    assert "too large" in found["images/bomb_0.png"] and "empty" in found["images/empty_0.jpg"]
    assert "not found" in found["images/missing_0.jpg"] and "truncated" in found["images/truncated_0.jpg"]


def test_every_exact_duplicate_is_found(planted_run) -> None:
    planted, summary, _ = planted_run
    groups = [set(g["members"]) for g in summary["duplicates"]["exact"]]
    assert all(any({copy, original} <= g for g in groups) for copy, original in planted.exact.items())
    assert len(groups) == len(planted.exact)  # nothing else is byte-identical


def test_most_near_duplicates_are_found_across_parts(planted_run) -> None:
    planted, summary, _ = planted_run
    groups = [set(g["members"]) for g in summary["duplicates"]["near"]]
    found = sum(any({copy, original} <= g for g in groups) for copy, original in planted.near.items())
    assert found >= 0.8 * len(planted.near), f"found {found} of {len(planted.near)} near duplicates"
    false_groups = [g for g in groups if not any({c, o} <= g for c, o in planted.near.items())]
    assert len(false_groups) <= 3, false_groups
    assert summary["duplicates"]["n_across_parts"] >= 10  # half the near copies are unlabeled


def test_flipped_labels_rank_among_the_top_suspects(planted_run) -> None:
    planted, summary, _ = planted_run
    top = [s["key"] for s in summary["label_problems"]["suspects"][:100]]
    hits = len(planted.flipped & set(top))
    assert hits >= 0.6 * len(planted.flipped), f"{hits} of {len(planted.flipped)} flipped labels in the top 100"


def test_outliers_rank_at_the_top(planted_run) -> None:
    planted, summary, _ = planted_run
    top = {o["key"] for o in summary["outliers"][:30]}
    assert len(planted.outliers & top) >= 7, sorted(planted.outliers - top)


def test_label_issues_disagreements_and_human_baseline(planted_run) -> None:
    planted, summary, _ = planted_run
    issues = {i["key"]: i["kind"] for i in summary["label_problems"]["issues"]}
    assert issues == planted.issues
    assert {d["key"] for d in summary["label_problems"]["disagreements"]} == planted.disagreeing
    for head in HEAD_NAMES:
        h = summary["human_baseline"][head]
        assert h["n_tasks"] == len(planted.twice)
        assert h["raw_agreement"] == pytest.approx(1 - 3 / len(planted.twice))
        assert 0.5 < h["kappa"] < 1.0


def test_distribution_and_trainer_view(planted_run) -> None:
    planted, summary, _ = planted_run
    dist = summary["distribution"]
    assert sum(dist["heads"]["timeofday"]["counts"].values()) == summary["n_labeled"] - 2  # 2 miss timeofday
    assert dist["trainer"]["max_ratio"] == TrainConfig().max_ratio
    weights = dist["trainer"]["heads"]["weather"]["class_weights"]
    assert weights["clear"] < 1 < max(weights["rain"], weights["snow"])  # the majority class is down-weighted
    assert summary["images"]["sizes"] == {"160x90": summary["n_items"] - len(planted.corrupt)}


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
def test_report_renders_in_chromium(planted_run, tmp_path: Path) -> None:
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    _, _, report = planted_run
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(report.as_uri())
        for sid, title in SECTIONS:
            heading = page.locator(f"#{sid} h2")
            assert heading.inner_text() == title
            heading.scroll_into_view_if_needed()
            assert heading.is_visible()
        images = page.evaluate("() => [...document.images].map(i => [i.alt, i.complete && i.naturalWidth > 0])")
        assert len(images) > 100 and all(ok for _, ok in images), [alt for alt, ok in images if not ok][:5]
        plots = page.locator("figure img")
        assert plots.count() >= 4
        thumbs = page.locator("#outliers .card img")
        assert thumbs.count() >= 30 and thumbs.first.bounding_box()["width"] > 100
        shot = tmp_path / "report.png"
        page.locator("#outliers").screenshot(path=str(shot))
        browser.close()
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("L"))
    assert image.width > 800 and pixels.std() > 20  # a grid of pictures, not a blank page


def test_phash_survives_reencoding_but_tells_scenes_apart(tmp_path: Path) -> None:
    generate(tmp_path, 2, seed=1, label_noise=0.0, size=(160, 90), progress=False)
    a = Image.open(tmp_path / "images/000000.jpg").convert("RGB")
    b = Image.open(tmp_path / "images/000001.jpg").convert("RGB")
    buffer = io.BytesIO()
    a.save(buffer, "JPEG", quality=50)
    again = Image.open(buffer).convert("RGB")

    def bits(x: Image.Image, y: Image.Image) -> int:
        return int(
            np.bitwise_count(np.uint64(describe(np.asarray(x))["phash"]) ^ np.uint64(describe(np.asarray(y))["phash"]))
        )

    assert bits(a, again) <= 4 and bits(a, b) > MAX_HAMMING


def _annotation(aid: int, who: int, values: dict[str, list[str]], created: str) -> dict:
    return {
        "id": aid,
        "completed_by": who,
        "created_at": created,
        "was_cancelled": False,
        "result": [
            {"type": "choices", "from_name": h, "to_name": "image", "value": {"choices": v}} for h, v in values.items()
        ],
    }


def test_export_reader_keeps_every_annotation_and_names_problems(tmp_path: Path, schema: LabelSchema) -> None:
    tiny = write_tiny_set(tmp_path, 6)
    pairs = [("day", "day"), ("night", "dusk"), ("dusk", "dusk"), ("day", "night")]
    tasks = []
    for t, (first, second) in enumerate(pairs):
        tasks.append(
            {
                "id": t + 1,
                "data": {"image": f"/data/local-files/?d={tiny.rows[t][0]}"},
                "annotations": [
                    _annotation(10 * t + 2, 2, {"timeofday": [second], "weather": ["clear"]}, "2024-01-02"),
                    _annotation(10 * t + 1, 1, {"timeofday": [first], "weather": ["clear"]}, "2024-01-01"),
                ],
            }
        )
    tasks.append(
        {
            "id": 5,
            "data": {"image": tiny.rows[4][0]},
            "annotations": [
                _annotation(
                    51, 1, {"timeofday": ["dawn"], "weather": ["rain", "snow"], "mood": ["happy"]}, "2024-01-01"
                )
            ],
        }
    )
    tasks.append({"id": 6, "data": {"image": "https://example.com/x.jpg"}, "annotations": []})
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks))
    from backend.labelstudio.analysis_input import read_export_input  # Label Studio's format is the backend's

    data = read_export_input(path, schema)
    assert [it.key for it in data.items] == ["1", "2", "3", "4", "5", "6"]
    assert data.items[1].labels == (schema.head("timeofday").index("dusk"), 0)  # the latest annotation gives the label
    assert [a.annotator for a in data.items[1].annotations] == ["1", "2"]  # in the order they were made
    assert data.items[5].source is None and "not a local file" in data.items[5].error
    kinds = {(i.key, i.head, i.kind) for i in data.label_issues}
    assert kinds == {
        ("5", "timeofday", OUTSIDE_CONFIG),
        ("5", "weather", SEVERAL_VALUES),
        ("5", "mood", OUTSIDE_CONFIG),
    }
    assert data.items[4].labels == (None, schema.head("weather").index("rain"))

    human = annotator_agreement(data.items, schema)
    assert human["timeofday"]["n_tasks"] == 4 and human["timeofday"]["raw_agreement"] == 0.5
    # first: day night dusk day; second: day dusk dusk night -> p_o = .5, p_e = (2*1 + 1*2 + 1*1)/16
    assert human["timeofday"]["kappa"] == pytest.approx((0.5 - 5 / 16) / (1 - 5 / 16))
    assert human["weather"]["raw_agreement"] == 1.0 and human["weather"]["kappa"] is None  # one class only: undefined
    assert {d["key"] for d in disagreements(data.items, schema)} == {"2", "4"}


def test_search_space_validation_and_sampling() -> None:
    with pytest.raises(ValueError, match="unknown search setting"):
        SearchSpace.from_dict({"dropout": [0.1, 0.2]})
    with pytest.raises(ValueError, match="lr takes a range"):
        SearchSpace.from_dict({"lr": [1e-2, 1e-4]})
    space = SearchSpace.from_dict({"epochs": [3], "lr": [1e-3, 2e-3]})
    base = TrainConfig(batch_size=8)
    configs = [space.sample(np.random.default_rng(0), base) for _ in range(2)]
    assert configs[0] == configs[1]  # seeded
    drawn = [space.sample(np.random.default_rng(s), base) for s in range(20)]
    assert all(c.epochs == 3 and 1e-3 <= c.lr <= 2e-3 and c.batch_size == 8 for c in drawn)
    assert len({c.max_ratio for c in drawn}) > 1 and len({round(c.margin, 6) for c in drawn}) == 20


def test_tune_writes_a_config_that_train_accepts_and_analyze_compares_the_model(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    tiny = write_tiny_set(tmp_path / "tiny", 36)
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"epochs": [1, 2], "image_size": [64, 96]}))
    base = tmp_path / "base.json"  # a flat configuration; few optimizer steps and in-process decoding keep it fast
    base.write_text(json.dumps({"min_steps": 2, "workers": 0}))
    out = tmp_path / "tune"
    assert (
        main(
            [
                "tune",
                "--data",
                str(tiny.manifest),
                "--trials",
                "3",
                "--out",
                str(out),
                "--space",
                str(space),
                "--config",
                str(base),
                "--epochs",
                "1",
                "--image-size",
                "64",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "best: trial" in printed and len([line for line in printed.splitlines() if line[1:6].strip().isdigit()]) == 3
    trials = json.loads((out / "trials.json").read_text())["trials"]
    baseline = {**TrainConfig().to_dict(), "min_steps": 2, "workers": 0, "epochs": 1, "image_size": 64}
    assert trials[0]["config"] == baseline  # trial 0 is the baseline
    assert len({(t["lr"], t["margin"]) for t in trials}) == 3
    best = json.loads((out / "best_config.json").read_text())
    assert best["val_macro_f1"] == max(t["val_macro_f1"] for t in trials)
    with Image.open(out / "trials.png") as plot:
        assert plot.width > 500
    model_dir = tmp_path / "model"
    assert (
        main(
            ["train", "--data", str(tiny.manifest), "--config", str(out / "best_config.json"), "--out", str(model_dir)]
        )
        == 0
    )
    meta = json.loads((model_dir / "meta.json").read_text())
    assert meta["config"] == best["config"]

    # The same images as a live project (a stand-in for the SDK): two annotators on the first 10 tasks.
    tasks = []
    for t, (rel, tod, wx) in enumerate(tiny.rows):
        anns = [_annotation(2 * t, 1, {"timeofday": [tod], "weather": [wx]}, "2024-01-01")]
        if t < 10:
            other = wx if t else next(c for c in HEADS["weather"] if c != wx)
            anns.append(_annotation(2 * t + 1, 2, {"timeofday": [tod], "weather": [other]}, "2024-01-02"))
        tasks.append({"id": t + 1, "data": {"image": f"/data/local-files/?d=tiny/{rel}"}, "annotations": anns})

    class FakeProject:
        def __init__(self, url: str, api_key: str, project_id: int) -> None:
            assert (url, api_key, project_id) == ("http://ls.test", "secret", 7)

        def label_config(self) -> str:
            return schema_xml

        def tasks(self) -> list[dict]:
            return json.loads(json.dumps(tasks))

        def download_token(self) -> str:
            return "secret"

    schema_xml = Path(__file__).resolve().parents[3].joinpath("label_config.xml").read_text()
    monkeypatch.setattr(backend_export, "LabelStudioProject", FakeProject)
    monkeypatch.setenv("LOCAL_FILES_DOCUMENT_ROOT", str(tmp_path))
    from backend.settings import get_settings

    get_settings.cache_clear()
    analysis = tmp_path / "analysis"
    try:
        assert (
            main(
                [
                    "analyze",
                    "--url",
                    "http://ls.test",
                    "--api-key",
                    "secret",
                    "--project",
                    "7",
                    "--out",
                    str(analysis),
                    "--model",
                    str(model_dir),
                ]
            )
            == 0
        )
    finally:
        get_settings.cache_clear()
    summary = json.loads((analysis / "summary.json").read_text())
    assert summary["n_items"] == 36 and summary["n_unreadable"] == 0
    assert summary["human_baseline"]["weather"]["raw_agreement"] == pytest.approx(0.9)
    assert summary["human_baseline"]["timeofday"]["raw_agreement"] == 1.0
    model_heads = summary["model"]["heads"]
    assert set(model_heads) == set(HEAD_NAMES) and all(
        0 <= h["accuracy"] <= 1 and h["n"] == 36 for h in model_heads.values()
    )
