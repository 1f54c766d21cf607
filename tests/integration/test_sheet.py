"""The contact sheet (`svdq report --batch B -o sheet.html`) of a real batch, made by the
session's worker on the tiny model, opened from disk in headless Chromium: every picture
loads from the file itself, the counts and badges are the report's, a failed job and a bad
row show their reasons, sorting by a score reorders the cards, and hostile file names,
metadata and job ids stay text."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from svdq.producer.bulk import BulkSubmitter
from svdq.producer.manifest import iter_source
from svdq.producer.report import report_rows
from tests.conftest import run_svdq
from tests.integration.helpers import FAST, make_image
from tests.integration.test_console import CHROMEDRIVER, CHROMIUM, browser  # noqa: F401

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,  # real Chromium and a batch through the worker: make test-slow
    pytest.mark.skipif(
        not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()),
        reason="needs Debian's chromium and chromium-driver (.ci/run installs them)",
    ),
]

HOSTILE_NAME = "<img src=x onerror=window.pwned=1>.png"
HOSTILE_META = {"note": "</pre></details><script>window.pwned=2</script>", "q": "\"'><b>x</b>"}
HOSTILE_ID = '"><img src=y onerror=window.pwned=3>'


def test_the_sheet_of_a_real_batch_in_chromium(
    client: Any,
    worker: str,
    svdq_env: dict[str, str],
    tmp_path: Path,
    browser: Any,  # noqa: F811
) -> None:
    from selenium.webdriver.common.by import By

    job = {**FAST, "num_frames": 3, "formats": ["mp4"]}
    # A folder whose one file has a hostile name (its source), with hostile metadata...
    folder = tmp_path / "folder"
    make_image(folder / HOSTILE_NAME, color=40)
    first = BulkSubmitter(client.jobqueue).run(
        iter_source(folder, {**job, "metadata": HOSTILE_META}), str(folder)
    )
    # ...then, into the same batch, a manifest: two more clips and a row with a hostile job id.
    rows = [
        {**job, "image": str(make_image(tmp_path / "b.png", (256, 256), color=120))},
        {**job, "image": str(make_image(tmp_path / "c.png", (300, 180), color=190)), "seed": 7},
        {**job, "image": str(tmp_path / "b.png"), "job_id": HOSTILE_ID},  # an invalid row
    ]
    manifest = tmp_path / "batch.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = BulkSubmitter(client.jobqueue, batch_id=first.batch_id).run(
        iter_source(manifest), str(manifest)
    )
    batch = client.batch(summary.batch_id)
    # A job that fails in the worker: its input is gone when the worker fetches it.
    good = client.prepare({**job, "image": str(make_image(tmp_path / "gone.png", color=9))})
    bad = good.replace(image=good.image.replace("inputs/", "inputs/missing-"), job_id="gone-1")
    pipe = client.jobqueue.redis.pipeline()
    client.jobqueue.record_job(pipe, bad, batch_id=batch.batch_id)
    batch.record.add_jobs(pipe, [("gone-1", "gone.png")])
    pipe.execute()
    client.app.send_task("svdq.generate", args=[bad.to_dict()], task_id="gone-1", queue="svdq.tiny")
    counts = batch.wait(timeout=240)
    assert counts == {"succeeded": 3, "failed": 1}, counts

    sheet = tmp_path / "out" / "sheet.html"
    sheet.parent.mkdir()
    started = time.monotonic()
    done = run_svdq(["report", "--batch", batch.batch_id, "-o", str(sheet)], svdq_env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "3 succeeded, 1 failed, 1 invalid" in done.stderr, done.stderr
    print(f"sheet of 5 rows written in {time.monotonic() - started:.1f}s")
    html = sheet.read_text()
    assert HOSTILE_NAME not in html and "<script>window" not in html  # escaped, every one
    expected = {r["job_id"] or r["source"]: r for r in report_rows(batch)}

    browser.get(sheet.as_uri())
    cards = browser.find_elements(By.CSS_SELECTOR, "#cards .card")
    assert len(cards) == 5
    # Every picture is in the file itself and decodes: two per clip (poster and source).
    images = browser.execute_script(
        "return [...document.images].map(i => [i.complete, i.naturalWidth, i.src.slice(0, 11)])"
    )
    assert len(images) == 6 and all(c and w > 0 and s == "data:image/" for c, w, s in images), (
        images
    )
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    # The hostile strings are text on the page, and nothing of them ran or became an element.
    text = browser.find_element(By.TAG_NAME, "body").text
    assert HOSTILE_NAME in text and HOSTILE_ID in text
    assert browser.execute_script("return window.pwned === undefined")
    assert not browser.find_elements(By.CSS_SELECTOR, "img[src=x], img[src=y], #cards b")
    meta = browser.execute_script("return document.querySelector('#cards pre').textContent")
    assert json.loads(meta) == HOSTILE_META

    # Counts at the top; each card's badges are the report's; failures say why.
    assert "5 rows: 3 succeeded, 1 failed, 1 invalid" in browser.find_element(By.ID, "counts").text
    seen = {}
    for card in cards:
        key = card.get_attribute("data-job") or card.find_element(By.CLASS_NAME, "src").text
        row = expected[key]
        assert card.get_attribute("data-badges").split() == row["badges"], key
        seen[row["status"]] = card
    assert "InvalidJobError" in seen["failed"].find_element(By.CLASS_NAME, "reason").text
    assert seen["failed"].get_attribute("data-badges") == "failed"
    assert "is not allowed" in seen["invalid"].find_element(By.CLASS_NAME, "reason").text
    links = seen["succeeded"].find_elements(By.CSS_SELECTOR, ".links a")
    assert {a.text for a in links} == {"mp4", "poster"}
    assert all("X-Amz-Expires=604800" in a.get_attribute("href") for a in links)
    assert "links expire" in browser.find_element(By.TAG_NAME, "header").text
    failed_button = browser.find_element(By.CSS_SELECTOR, "[data-filter=failed]")
    assert failed_button.text == "failed 2"
    failed_button.click()
    shown = [c.get_attribute("data-status") for c in cards if c.is_displayed()]
    assert sorted(shown) == ["failed", "invalid"]
    browser.find_element(By.CSS_SELECTOR, "[data-filter=all]").click()

    # Sorting by a score: highest first, then lowest first; rows without it last.
    def order() -> list[tuple[str, str]]:
        return [
            (c.get_attribute("data-job"), c.get_attribute("data-motion"))
            for c in browser.find_elements(By.CSS_SELECTOR, "#cards .card")
        ]

    before = order()
    browser.find_element(By.CSS_SELECTOR, "[data-sort=motion]").click()
    down = order()
    browser.find_element(By.CSS_SELECTOR, "[data-sort=motion]").click()
    up = order()
    motions = {j: float(m) for j, m in before if m}
    assert len(set(motions.values())) == 3, motions
    assert [j for j, _ in down[:3]] == sorted(motions, key=lambda j: -motions[j])
    assert [j for j, _ in up[:3]] == sorted(motions, key=motions.__getitem__)
    assert down != up and {m for _, m in down[3:]} == {""}
    browser.save_screenshot(str(tmp_path / "sheet.png"))

    # The same sheet from `svdq wait --batch B --report FILE.html`.
    again = run_svdq(
        ["wait", "--batch", batch.batch_id, "--report", "w.html"], svdq_env, cwd=tmp_path
    )
    assert again.returncode == 1, again.stderr  # a job failed
    assert (tmp_path / "w.html").read_text().count('<article class="card"') == 5
