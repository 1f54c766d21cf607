"""Attacks on the contact sheet's pure parts (no Redis, no S3 server): hostile scores, links,
names and records. Each was either a defect found by review and since fixed, or an attack
that failed: all are regression tests now."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from svdq.producer.report import row_badges
from svdq.producer.sheet import _picture
from svdq.producer.sheethtml import POLICY, Card, render_card, render_head, render_tail
from svdq.shared.records import repaired
from svdq.shared.settings import Settings
from svdq.shared.storage.local import LocalStore


def _card(**kw: object) -> Card:
    fields: dict[str, object] = {"job_id": "j", "source": "s.png", "status": "succeeded", **kw}
    return Card(index=0, **fields)  # type: ignore[arg-type]


def test_only_http_links_become_links() -> None:
    """javascript:, data:, vbscript: and look-alikes never reach an href (attack failed)."""
    links = {
        "a": "javascript:alert(1)",
        "b": "JAVASCRIPT:alert(1)",
        "c": " javascript:alert(1)",
        "d": "data:text/html,<script>alert(1)</script>",
        "e": "vbscript:x",
        "f": "https://ok.example/x?a=1&b=\"'<>",
    }
    html = render_card(_card(links=links))
    hrefs = re.findall(r'href="([^"]*)"', html)
    assert hrefs == ["https://ok.example/x?a=1&amp;b=&quot;&#x27;&lt;&gt;"]


def test_a_picture_that_is_not_a_data_image_is_not_shown() -> None:
    html = render_card(_card(poster="https://evil.example/p.png", thumb="data:text/html,x"))
    assert "<img" not in html


def test_the_policy_blocks_every_remote_load() -> None:
    """No source is allowed but data: images and the page's own hashed script and style."""
    parts = dict(p.strip().split(" ", 1) for p in POLICY.split(";"))
    assert parts["default-src"] == "'none'" and parts["img-src"] == "data:"
    assert "http" not in POLICY and "*" not in POLICY and "unsafe" not in POLICY
    page = render_head("t", [], {}, {}, 60) + render_tail()
    assert page.count("<script>") == 1 and page.count("<style>") == 1


def test_nan_and_infinite_scores_sort_as_missing() -> None:
    html = render_card(_card(scores={"motion": float("nan"), "flicker": float("inf")}))
    assert 'data-motion=""' in html and 'data-flicker=""' in html
    assert ">nan<" not in html and ">inf<" not in html


def test_bidi_controls_in_names_do_not_reach_the_page() -> None:
    html = render_card(_card(source="invoice\u202egnp.exe", reason="x\u2066y"))
    assert not re.search("[\u202a-\u202e\u2066-\u2069]", html)


def test_repaired_zero_or_false_strings_are_not_repaired() -> None:
    assert not repaired({"repaired": 0})
    assert not repaired({"repaired": "false"})


def test_scores_of_the_wrong_type_earn_no_badge() -> None:
    """Strings, booleans and None as scores: no badge (attack failed)."""
    scores = {"motion": "0", "displacement": None, "flicker": True, "chunk_jump": "9"}
    assert row_badges("succeeded", {"scores": scores}) == []


def test_scores_that_are_not_an_object_earn_no_badge() -> None:
    assert row_badges("succeeded", {"scores": [0.5, 9]}) == []
    assert row_badges("succeeded", {"scores": "flicker"}) == []


class CountingStore(LocalStore):
    """A local store that remembers how many bytes each read returned."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.read: list[int] = []

    def get_bytes(self, key: str) -> bytes:
        data = super().get_bytes(key)
        self.read.append(len(data))
        return data


def test_an_oversize_poster_is_not_downloaded(tmp_path: Path) -> None:
    settings = Settings.from_env({})
    store = CountingStore(tmp_path)
    big = settings.max_input_bytes + 1
    (tmp_path / "results").mkdir()
    with (tmp_path / "results" / "poster.png").open("wb") as fh:
        fh.truncate(big)  # sparse: costs no disk
    batch = SimpleNamespace(jobqueue=SimpleNamespace(settings=settings))
    uri = store.uri("results/poster.png")
    picture, note = _picture(store, batch, uri, 64, "poster")  # type: ignore[arg-type]
    assert picture is None and note
    assert all(n <= settings.max_input_bytes for n in store.read), store.read


def test_a_poster_within_the_limit_is_still_shown(tmp_path: Path) -> None:
    """The size check (head) refuses only what is over SVDQ_MAX_INPUT_BYTES."""
    from PIL import Image

    settings = Settings.from_env({})
    store = CountingStore(tmp_path)
    (tmp_path / "results").mkdir()
    Image.new("RGB", (80, 40), (10, 200, 30)).save(tmp_path / "results" / "p.png")
    batch = SimpleNamespace(jobqueue=SimpleNamespace(settings=settings))
    picture, note = _picture(store, batch, store.uri("results/p.png"), 64, "poster")  # type: ignore[arg-type]
    assert note == "" and picture and picture.startswith("data:image/jpeg;base64,")
    gone, why = _picture(store, batch, store.uri("results/gone.png"), 64, "poster")  # type: ignore[arg-type]
    assert gone is None and "no longer in the store" in why


@pytest.mark.parametrize(
    ("path", "presign", "words"),
    [
        ("s.html", 0, "--presign=0 is not allowed: 1 to 604800"),
        ("s.html", 604801, "--presign=604801 is not allowed: 1 to 604800"),
        ("s.csv", 0, "--presign=0 is not allowed: 1 or more"),
        ("no/such/s.html", None, "no/such does not exist"),
        ("here", None, "is a folder"),
    ],
)
def test_a_report_that_cannot_be_written_is_refused_first(
    tmp_path: Path, path: str, presign: int | None, words: str
) -> None:
    from svdq.producer.sheet import check_report
    from svdq.shared.errors import InvalidJobError

    (tmp_path / "here").mkdir()
    with pytest.raises(InvalidJobError, match=re.escape(words)):
        check_report(tmp_path / path, presign)
    check_report(tmp_path / "ok.html", 604800)  # the longest S3 allows: accepted
    check_report(tmp_path / "ok.csv", None)


def test_report_rows_treat_non_finite_scores_as_missing() -> None:
    from svdq.producer.report import finite

    assert [finite(v) for v in (float("nan"), float("inf"), -float("inf"))] == [None] * 3
    assert [finite(v) for v in (0, 0.5, True, "1", None)] == [0, 0.5, None, None, None]


def test_every_bidi_control_is_shown_as_an_escape() -> None:
    from svdq.producer.sheethtml import BIDI

    html = render_card(_card(source="a" + BIDI + "b", metadata={"k": BIDI}, links={BIDI: "x"}))
    assert not any(c in html for c in BIDI)
    assert "a\\u061c\\u200e" in html


def test_a_result_spec_counts_only_when_it_names_the_jobs_own_input(tmp_path: Path) -> None:
    """Without a submission record, the result's spec is the source only if its image is the
    content address the job id was derived from."""
    from svdq.producer.sheet import source_spec
    from svdq.shared.jobid import finalize
    from svdq.shared.spec import JobSpec

    store = LocalStore(tmp_path)
    jobqueue = SimpleNamespace(store=store, job_spec=lambda job_id: None)
    own, other = "a" * 64, "b" * 64
    spec = finalize(JobSpec.from_dict({"image": store.uri(f"inputs/{own}.png")}), own)
    result = {"spec": spec.to_dict()}
    found = source_spec(jobqueue, spec.job_id, result)  # type: ignore[arg-type]
    assert found is not None and found.image == spec.image
    forged = {"spec": {**spec.to_dict(), "image": store.uri(f"inputs/{other}.png")}}
    assert source_spec(jobqueue, spec.job_id, forged) is None  # type: ignore[arg-type]
    assert source_spec(jobqueue, spec.job_id, {"spec": "x"}) is None  # type: ignore[arg-type]
