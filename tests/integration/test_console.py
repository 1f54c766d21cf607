"""The web console in real headless Chromium (Debian's chromium and chromium-driver; .ci/run
installs them): log in with a token, upload an image and see it cropped as the model will,
follow the job's progress over the event stream, play the clip; open a batch's grid of
posters; see the fleet. Against the session's `svdq api` server and worker; a screenshot of
each page is saved in the test's temporary folder."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from svdq.producer.report import row_badges
from svdq.shared.images import fit
from svdq.shared.scores import SCORES
from svdq.shared.storage import S3Store
from tests.integration.apiserver import Api, auth, upload
from tests.integration.helpers import FAST

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,  # real Chromium: make test-slow (CI runs it)
    pytest.mark.skipif(
        not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()),
        reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
        "chromium-driver; .ci/run installs them)",
    ),
]

TOKEN_KEY = "svdq.token"  # console/app.js keeps the token under this sessionStorage key


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # tests run as root in CI
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--autoplay-policy=no-user-gesture-required",
        "--window-size=1280,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # A Service with a path skips Selenium Manager, so nothing is downloaded
    # (selenium/webdriver/common/driver_finder.py: "Skipping Selenium Manager; path to %s
    # driver specified in Service class").
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    try:
        yield driver
        # No Content-Security-Policy violation (an inline script or style, a foreign host).
        logs = driver.get_log("browser")
        assert not [e for e in logs if "Content Security Policy" in e["message"]], logs
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def token(api: Api) -> str:
    return api.token("browser")


def until(check: Callable[[], Any], what: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def bands(path: Path) -> Path:
    """192×128: red, green and blue bands, so crop, pad and stretch each look different."""
    image = Image.new("RGB", (192, 128), (220, 30, 30))
    image.paste((30, 200, 60), (0, 32, 192, 96))
    image.paste((40, 60, 220), (0, 96, 192, 128))
    image.save(path)
    return path


def canvas_pixels(driver: Any) -> list[list[int]]:
    return list(
        driver.execute_script(
            "const c = document.getElementById('preview');"
            "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            "const out = [];"
            "for (let y = 4; y < c.height; y += 8) for (let x = 4; x < c.width; x += 8) {"
            "  const i = (y * c.width + x) * 4; out.push([x, y, d[i], d[i + 1], d[i + 2]]); }"
            "return out;"
        )
    )


def set_field(driver: Any, name: str, value: str) -> None:
    driver.execute_script(
        "const e = document.getElementById('f-' + arguments[0]); e.value = arguments[1];"
        "e.dispatchEvent(new Event('change'));",
        name,
        value,
    )


def test_submit_preview_progress_and_the_clip_plays(
    api: Api, token: str, browser: Any, worker: str, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{api.url}/")
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.ID, "login-button").click()
    until(lambda: browser.find_elements(By.ID, "f-width"), "the job form (from /v1/schema)", 30)
    assert browser.execute_script(f"return sessionStorage.getItem('{TOKEN_KEY}')") == token
    assert browser.execute_script(f"return localStorage.getItem('{TOKEN_KEY}')") is None
    image = bands(tmp_path / "bands.png")
    browser.find_element(By.ID, "file").send_keys(str(image))
    until(lambda: browser.find_element(By.ID, "submit").is_enabled(), "the image to load", 30)
    for name, value in {
        "variant": "tiny",
        "width": "128",
        "height": "64",
        "num_frames": "3",
        "num_inference_steps": str(FAST["num_inference_steps"]),
        "min_guidance_scale": "1.5",
        "max_guidance_scale": "2.5",
    }.items():
        set_field(browser, name, value)
    browser.execute_script(
        "for (const b of document.querySelectorAll('#f-formats input')) b.checked = true;"
    )
    # The preview is the worker's own fit (shared/images.py) at the target size, in every mode.
    source = Image.open(image).convert("RGB")
    for mode in ("crop", "pad", "stretch"):
        set_field(browser, "resize", mode)
        want = fit(source, 128, 64, mode)
        got = canvas_pixels(browser)
        assert len(got) == 16 * 8
        for x, y, *rgb in got:
            near = {want.getpixel((min(127, max(0, x + dx)), min(63, max(0, y + dy))))
                    for dx in (-3, 0, 3) for dy in (-3, 0, 3)}  # fmt: skip
            if len(near) == 1:  # away from a band's edge, where resamplers differ
                assert max(abs(a - b) for a, b in zip(rgb, near.pop(), strict=True)) < 24, (
                    mode, x, y, rgb)  # fmt: skip
    set_field(browser, "resize", "crop")
    browser.save_screenshot(str(tmp_path / "submit.png"))
    browser.find_element(By.ID, "submit").click()
    until(
        lambda: (
            browser.execute_script("return document.getElementById('job').dataset.state")
            == "succeeded"
        ),
        "the job to succeed (seen over the event stream)",
    )
    job = browser.execute_script(
        "const j = document.getElementById('job');"
        "const p = document.getElementById('job-progress');"
        "return {id: document.getElementById('job-id').textContent,"
        " progress: Number(j.dataset.progress), max: p.max, value: p.value};"
    )
    assert job["progress"] >= 1 and job["max"] == FAST["num_inference_steps"], job
    assert job["value"] == job["max"], job
    video = until(
        lambda: browser.execute_script(
            "const v = document.getElementById('job-video');"
            "return v.readyState >= 1 ? {d: v.duration, w: v.videoWidth, h: v.videoHeight,"
            " src: v.currentSrc} : (v.error ? {error: v.error.code} : null);"
        ),
        "the <video> to load the clip",
        30,
    )
    assert "error" not in video, video
    assert video["d"] > 0 and (video["w"], video["h"]) == (128, 64), video
    gif = until(
        lambda: browser.execute_script(
            "const g = document.getElementById('job-gif');"
            "return g.complete && g.naturalWidth ? [g.naturalWidth, g.naturalHeight] : null;"
        ),
        "the GIF to load",
        30,
    )
    assert gif == [128, 64]
    links = browser.find_elements(By.CSS_SELECTOR, "#job-links a")
    assert {a.text for a in links} == {"download mp4", "download gif", "download poster"}
    view = requests.get(f"{api.url}/v1/jobs/{job['id']}", headers=auth(token), timeout=10).json()
    assert (view["result"]["width"], view["result"]["height"]) == (128, 64)
    spec = view["result"]["spec"]
    assert (spec["min_guidance_scale"], spec["max_guidance_scale"]) == (1.5, 2.5)
    # The clip's scores and badges, as the record and the API give them.
    shown = browser.execute_script(
        "return [...document.querySelectorAll('#job-scores tr')].map(r => [r.dataset.score,"
        " Number(r.cells[1].textContent)]);"
    )
    scores = view["result"]["scores"]
    assert [k for k, _ in shown] == [k for k in SCORES if isinstance(scores.get(k), float)]
    for name, value in shown:
        assert value == pytest.approx(scores[name], rel=1e-3), name
    badges = [b.text for b in browser.find_elements(By.CSS_SELECTOR, "#job-badges .badge")]
    assert badges == view["badges"] == row_badges("succeeded", view["result"])
    browser.save_screenshot(str(tmp_path / "job.png"))


def test_batch_grid_shows_every_poster_and_opens_a_clip(
    api: Api, token: str, browser: Any, worker: str, store: S3Store, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    job = {**FAST, "num_frames": 3, "formats": ["mp4"]}
    rows = [json.dumps({**job, "image": upload(store, f"grid{i}.png", 90 + i, tmp_path)})
            for i in range(2)] + [json.dumps({**job, "image": "/etc/hostname"})]  # fmt: skip
    r = requests.post(
        f"{api.url}/v1/batches", data="\n".join(rows), headers=auth(token), timeout=30
    )
    assert r.status_code == 202, r.text
    batch_id = r.json()["batch_id"]
    url = f"{api.url}/v1/batches/{batch_id}"
    until(
        lambda: (
            requests.get(url, headers=auth(token), timeout=10).json()["counts"].get("succeeded")
            == 2
        ),
        "the batch's two jobs",
    )
    browser.get(f"{api.url}/")
    browser.execute_script(f"sessionStorage.setItem('{TOKEN_KEY}', arguments[0])", token)
    browser.get(f"{api.url}/#batches/{batch_id}")
    until(lambda: browser.find_elements(By.CSS_SELECTOR, "#grid[data-ready]"), "the grid", 30)
    listed = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#batch-list a")]
    assert batch_id in listed
    cards = browser.find_elements(By.CSS_SELECTOR, "#grid .card[data-job]")
    assert [c.get_attribute("data-state") for c in cards] == ["succeeded", "succeeded"]
    lines = [json.loads(x) for x in requests.get(f"{url}/results", headers=auth(token),
                                                  timeout=10).text.splitlines()]  # fmt: skip
    by_job = {x["job_id"]: x for x in lines if x.get("job_id")}
    for card in cards:
        line = by_job[card.get_attribute("data-job")]
        assert (card.get_attribute("data-badges") or "").split() == line["badges"]
        assert f"motion {line['scores']['motion']:.4g}"[:10] in card.text
    assert len(browser.find_elements(By.CSS_SELECTOR, "#grid .card.rejected")) == 1
    sizes = until(
        lambda: browser.execute_script(
            "const imgs = [...document.querySelectorAll('#grid img.poster')];"
            "return imgs.every(i => i.complete) ? imgs.map(i => i.naturalWidth) : null;"
        ),
        "every poster to load",
        30,
    )
    assert len(sizes) == 2 and all(w > 0 for w in sizes), sizes
    assert "2 succeeded" in browser.find_element(By.ID, "batch-counts").text
    browser.save_screenshot(str(tmp_path / "batch.png"))
    cards[0].click()
    duration = until(
        lambda: browser.execute_script(
            "const v = document.getElementById('viewer-video');"
            "return v.readyState >= 1 ? v.duration : 0;"
        ),
        "the clip in the viewer",
        30,
    )
    assert duration > 0
    browser.save_screenshot(str(tmp_path / "clip.png"))
    browser.find_element(By.ID, "viewer-close").click()


def test_fleet_page(api: Api, token: str, browser: Any, worker: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{api.url}/")
    browser.execute_script(f"sessionStorage.setItem('{TOKEN_KEY}', arguments[0])", token)
    browser.get(f"{api.url}/#fleet")
    until(lambda: browser.find_elements(By.CSS_SELECTOR, "#fleet[data-ready]"), "the fleet", 30)
    text = browser.find_element(By.ID, "fleet").text
    assert "svdq.tiny" in text and "Workers (" in text and "Throughput" in text
    assert "Workers (0)" not in text  # the session's worker
    browser.save_screenshot(str(tmp_path / "fleet.png"))
