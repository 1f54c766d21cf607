"""Bulk sources read row by row: folders, CSV and JSON-lines manifests, bad rows named by
line and field, and a 100 000-row manifest parsed in bounded memory."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from svdq.producer.bulkcli import strict_check
from svdq.producer.manifest import csv_value, iter_source


def test_folder_is_walked_recursively_in_name_order_and_non_images_skipped(tmp_path: Path) -> None:
    for name in ("b.png", "a.JPG", "sub/c.webp", "sub/deeper/d.jpeg", "notes.txt", "README"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".DS_Store").write_bytes(b"x")
    rows = list(iter_source(tmp_path, {"variant": "tiny"}))
    names = [Path(r.source).relative_to(tmp_path).as_posix() for r in rows]
    assert names == ["README", "a.JPG", "b.png", "notes.txt", "sub/c.webp", "sub/deeper/d.jpeg"]
    jobs = [r for r in rows if r.data]
    assert [r.data for r in jobs][1] == {"variant": "tiny", "image": str(tmp_path / "b.png")}
    skipped = {Path(r.source).name: r.skipped for r in rows if r.skipped}
    assert set(skipped) == {"README", "notes.txt"}
    assert skipped["notes.txt"] == (
        "not an image file: extension '.txt' is not one of .png, .jpg, .jpeg, .webp, .gif, "
        ".bmp, .tif, .tiff"
    )


def test_jsonl_rows_override_defaults_and_bad_lines_are_named(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        '{"image": "a.png", "seed": 3}\n'
        "\n"
        "not json\n"
        "[1, 2]\n"
        '{"image": "s3://bkt/x.png", "variant": "svd", "formats": ["gif"]}\n'
    )
    rows = list(iter_source(manifest, {"variant": "tiny", "seed": 1}))
    assert [r.line for r in rows] == [1, 3, 4, 5]
    assert rows[0].data == {"variant": "tiny", "seed": 3, "image": str(tmp_path / "a.png")}
    assert rows[1].error and rows[1].error.startswith("line 3: not valid JSON")
    assert rows[2].error == "line 4: a JSON object is required"
    assert rows[3].data == {
        "variant": "svd",
        "seed": 1,
        "image": "s3://bkt/x.png",
        "formats": ["gif"],
    }


def test_csv_cells_take_the_field_types(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "image,motion_bucket_id,noise_aug_strength,formats,metadata,seed\n"
        'p.png,180,0.1,mp4|gif,"{""sku"": ""A1""}",\n'
        "q.png,lots,,,,\n"
        "r.png,,,,{bad,\n"
    )
    rows = list(iter_source(manifest))
    assert rows[0].data == {
        "image": str(tmp_path / "p.png"),
        "motion_bucket_id": 180,
        "noise_aug_strength": 0.1,
        "formats": ["mp4", "gif"],
        "metadata": {"sku": "A1"},
    }
    assert (rows[1].line, rows[1].field) == (3, "motion_bucket_id")
    assert rows[1].error == "line 3: motion_bucket_id='lots' is not allowed: an integer 0–255"
    assert (rows[2].line, rows[2].field) == (4, "metadata")


def test_strict_check_names_every_bad_row(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        '{"image": "a.png"}\n{"image": "b.png", "motion_bucket_id": 999}\n{"imag": "c.png"}\n'
    )
    bad = strict_check(iter_source(manifest))
    assert len(bad) == 2
    assert bad[0].endswith(":2: motion_bucket_id=999 is out of range: an integer 0–255")
    assert ":3: unknown field 'imag'" in bad[1]


def test_unsupported_source(tmp_path: Path) -> None:
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(ValueError, match=r"a folder of images, or a manifest ending in \.csv"):
        iter_source(tmp_path / "m.txt")
    with pytest.raises(FileNotFoundError, match="no such folder or manifest file"):
        iter_source(tmp_path / "missing.csv")
    assert csv_value("unknown_column", "v") == "v"


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_a_100k_row_manifest_streams_in_bounded_memory(tmp_path: Path, kind: str) -> None:
    manifest = tmp_path / f"big.{kind}"
    with manifest.open("w") as fh:
        if kind == "csv":
            fh.write("image,seed,motion_bucket_id\n")
        for i in range(100_000):
            if kind == "csv":
                fh.write(f"s3://bkt/inputs/{i:064x}.png,{i},{i % 256}\n")
            else:
                fh.write(json.dumps({"image": f"s3://bkt/in/{i}.png", "seed": i}) + "\n")
    size = manifest.stat().st_size
    tracemalloc.start()
    count = 0
    for row in iter_source(manifest, {"variant": "tiny"}):
        assert row.data is not None
        count += 1
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 100_000
    # The file is several MB; reading it must never hold more than a sliver of it.
    assert size > 4_000_000
    assert peak < 200_000, f"peak {peak} bytes while parsing {size} bytes"
