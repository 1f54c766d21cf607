"""The contact sheet without a browser or a store: badge thresholds, the repaired lookup, the
card markup (every outside string escaped, only http(s) links, only embedded pictures), the
page's Content-Security-Policy hashes, thumbnails under the input limits, the CSV column."""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from svdq.producer.report import row_badges, write_report
from svdq.producer.sheet import thumbnail
from svdq.producer.sheethtml import Card, badge_counts, render_card, render_head, render_tail
from svdq.shared.errors import InvalidJobError
from svdq.shared.records import repaired
from svdq.shared.scores import badges
from svdq.shared.settings import Settings
from tests.unit.test_hostile_inputs import claims_huge

HOSTILE = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>&amp;"


def test_badges_from_scores() -> None:
    still = {"motion": 0.001, "displacement": 0.02, "flicker": 0.0001, "chunk_jump": 1.0}
    assert badges(still) == ["static"]
    # A flicker raises motion: not static, but flicker.
    assert badges({**still, "motion": 0.05, "flicker": 0.02}) == ["flicker"]
    assert badges({**still, "motion": 0.03}) == []  # it moves
    assert badges({**still, "chunk_jump": 3.5}) == ["static", "flicker"]
    assert badges({"motion": True, "displacement": False}) == []
    assert badges(None) == [] and badges([0.5]) == [] and badges("x") == []
    # The job's own thresholds decide (the rule its repair used); junk ones count as default.
    assert badges({"motion": 0.02}, min_motion=0.05) == ["static"]
    assert badges({"flicker": 0.002}, max_flicker=0.001) == ["flicker"]
    assert badges({"motion": 0.001}, min_motion="x", max_flicker=float("nan")) == ["static"]
    # NaN / infinite scores (Python's JSON reads them) earn nothing.
    assert badges({"motion": float("nan"), "flicker": float("inf")}) == []


def test_repaired_reads_the_quality_record() -> None:
    tries = [{"try": 0, "reason": "first"}, {"try": 1, "reason": "static"}]
    record = {"quality": {"found": ["static"]}, "tries": tries}
    assert repaired(record)
    # Candidates alone are no repair; nothing found is no repair.
    assert not repaired({"quality": {"found": []}, "tries": tries})
    candidates = [{"reason": "first"}, {"reason": "candidate"}]
    assert not repaired({"quality": {"found": ["static"]}, "tries": candidates})
    for junk in (None, {}, {"repaired": 0}, {"repaired": "false"}, {"quality": [1], "tries": 2}):
        assert not repaired(junk)


def test_row_badges_order() -> None:
    tries = [{"reason": "first"}, {"reason": "flicker"}]
    result = {"quality": {"found": ["flicker"]}, "tries": tries, "scores": {"flicker": 0.5}}
    assert row_badges("succeeded", result) == ["repaired", "flicker"]
    # The job's thresholds, from its spec: 0.02 is flicker only for a job that said so.
    strict = {"scores": {"flicker": 0.02, "motion": 0.5}, "spec": {"max_flicker": 0.015}}
    assert row_badges("succeeded", strict) == ["flicker"]
    assert row_badges("succeeded", {**strict, "spec": {}}) == ["flicker"]
    assert row_badges("succeeded", {**strict, "spec": {"max_flicker": 0.05}}) == []
    assert row_badges("failed", None) == ["failed"]
    assert row_badges("invalid", None) == ["failed"]
    assert row_badges("skipped", None) == row_badges("duplicate", None) == []
    assert row_badges(["failed"], {"scores": [1]}) == []  # tampered shapes: no error


class Collect(HTMLParser):
    """Every element and every piece of text, as a browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_every_outside_string_is_text() -> None:
    card = Card(
        index=0,
        job_id=HOSTILE,
        source=HOSTILE,
        status="failed",
        reason=HOSTILE,
        badges=["failed", HOSTILE],
        scores={"motion": 0.01},
        poster="javascript:alert(3)",  # not an embedded picture: not shown
        thumb='data:image/png;base64,AAAA" onerror="alert(4)',
        links={
            "mp4": "javascript:alert(5)",
            "gif": 'https://h/x?a=1&b="2"',
            HOSTILE: "https://h/y",
        },
        metadata={"note": HOSTILE},
    )
    parsed = Collect()
    parsed.feed(render_card(card))
    assert {t for t, _ in parsed.tags} <= {
        "article", "div", "figure", "img", "figcaption", "p", "code", "span", "table", "tr",
        "th", "td", "a", "details", "summary", "pre",
    }  # fmt: skip
    for _, attrs in parsed.tags:
        assert not [k for k in attrs if k.startswith("on")], attrs
    article = parsed.tags[0][1]
    assert article["data-job"] == HOSTILE and article["data-motion"] == "0.01"
    [img] = [a for t, a in parsed.tags if t == "img"]
    assert img["src"] == 'data:image/png;base64,AAAA" onerror="alert(4)'  # one attribute value
    hrefs = [a["href"] for t, a in parsed.tags if t == "a"]
    assert hrefs == ['https://h/x?a=1&b="2"', "https://h/y"]
    text = "".join(parsed.text)
    assert text.count(HOSTILE) >= 5  # id, source, badge, reason, link name; metadata as JSON


def test_page_policy_allows_exactly_its_own_script_and_style() -> None:
    page = render_head("svdq batch b1", [HOSTILE], {"succeeded": 2, "failed": 1}, {}, 3600)
    page += render_tail()
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page)
    assert policy
    rules = html.unescape(policy.group(1))
    script = re.search(r"<script>(.*)</script>", page, re.S)
    style = re.search(r"<style>(.*)</style>", page, re.S)
    assert script and style
    for kind, body in (("script-src", script.group(1)), ("style-src", style.group(1))):
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert f"{kind} 'sha256-{digest}'" in rules
    assert "default-src 'none'" in rules and "img-src data:" in rules
    assert HOSTILE not in page and "3 rows: 2 succeeded, 1 failed" in re.sub("<[^>]+>", "", page)
    assert "(in 1 hours)" in page


def test_badge_counts() -> None:
    cards = [
        Card(0, "a", "a.png", "succeeded"),
        Card(1, "b", "b.png", "succeeded", badges=["static"]),
        Card(2, "c", "c.png", "failed", badges=["failed"]),
    ]
    assert badge_counts(cards) == {"clean": 1, "static": 1, "failed": 1}


def test_thumbnail_is_small_and_keeps_the_input_limits() -> None:
    settings = Settings.from_env({})
    buf = io.BytesIO()
    Image.new("RGB", (1024, 576), (200, 10, 10)).save(buf, format="PNG")
    uri = thumbnail(buf.getvalue(), settings, 320, "poster")
    assert uri.startswith("data:image/jpeg;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert image.size == (320, 180)
    with pytest.raises(InvalidJobError, match="source x"):
        thumbnail(claims_huge(30000), settings, 320, "source x")
    with pytest.raises(InvalidJobError, match="is not a PNG"):
        thumbnail(b"<html>", settings, 320, "source x")


def test_csv_report_has_the_badges_column(tmp_path: Path) -> None:
    row = {"source": "a.png", "job_id": "j", "status": "succeeded", "reason": "", "outputs": {},
           "presigned": {}, "seconds": 1.0, "badges": ["repaired", "flicker"]}  # fmt: skip
    write_report(tmp_path / "r.csv", iter([row]))
    with (tmp_path / "r.csv").open() as fh:
        assert next(csv.DictReader(fh))["badges"] == "repaired flicker"
