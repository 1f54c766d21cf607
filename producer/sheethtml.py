"""The contact sheet's HTML: one self-contained file (no request anywhere when opened: images
are data: URIs, the style and the sorting script inline) that a team reviewing a batch opens,
filters by badge and sorts by score. Pure functions of `Card`s, so they are tested without a
browser or a store; producer/sheet.py gathers the cards.

Everything shown comes from outside (job ids, sources, metadata, failure reasons, links), so
every string goes through `html.escape` (quotes too: many land in attributes) after its
bidirectional controls are shown as escapes (a file named "invoice\\u202egnp.exe" would
otherwise display as "invoiceexe.png": the sheet would lie about a source), only http(s)
links become links, and the page's own Content-Security-Policy allows nothing but its one
script and one style (by hash) and data: images: markup that slipped through anyway could
not run a script, load anything or send a form.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from html import escape
from typing import Any

from svdq.producer.report import BADGE_ORDER
from svdq.shared.scores import BADGES, SCORES, finite

SORT_KEYS = (*SCORES, "seconds")
BADGE_HELP = {
    "failed": "the job failed, or the row never became a job (its reason is shown)",
    "repaired": "the first clip was bad and an automatic repair made this one",
    **{name: f"scores: {rule} (shared/scores.py)" for name, rule in BADGES.items()},
}


@dataclass
class Card:
    """One row of the batch as the sheet shows it."""

    index: int  # submission order: the sheet's default order
    job_id: str
    source: str
    status: str
    reason: str = ""
    badges: list[str] = field(default_factory=list)
    scores: dict[str, Any] = field(default_factory=dict)  # SCORES and "seconds"
    poster: str | None = None  # data: URI
    thumb: str | None = None  # data: URI of the source image
    note: str = ""  # why a picture is missing
    links: dict[str, str] = field(default_factory=dict)  # kind -> presigned URL
    metadata: Any = None
    size: str = ""  # "1024×576, 25 frames"


def data_uri(data: bytes, content_type: str) -> str:
    """`data` inline, for an <img> that needs no request."""
    return f"data:{content_type};base64,{base64.b64encode(data).decode()}"


# Characters that reorder the text around them (Unicode's bidirectional controls and marks):
# in an outside string they are shown as \\uXXXX, never obeyed.
BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_SHOW_BIDI = {ord(c): f"\\u{ord(c):04x}" for c in BIDI}


def _e(value: Any) -> str:
    """`value` as text safe in an element or a quoted attribute: escaped, bidi controls shown."""
    return escape(str(value).translate(_SHOW_BIDI), quote=True)


def _number(value: Any) -> str:
    """A score as shown and sorted on: "" (missing) unless a finite number (shared/scores.py
    `finite`: NaN or infinity would sort arbitrarily in the page's script)."""
    number = finite(value)
    return "" if number is None else f"{number:.4g}"


def render_card(card: Card) -> str:
    """One <article>: pictures, id, source, badges, reason, scores, links, metadata."""
    attrs = {
        "class": "card",
        "id": f"card-{card.index}",
        "data-index": str(card.index),
        "data-job": card.job_id,
        "data-status": card.status,
        "data-badges": " ".join(card.badges),
        **{f"data-{k}": _number(card.scores.get(k)) for k in SORT_KEYS},
    }
    head = " ".join(f'{k}="{_e(v)}"' for k, v in attrs.items())
    pics = []
    for cls, uri, caption in (("poster", card.poster, "clip"), ("thumb", card.thumb, "source")):
        img = (
            f'<img class="{cls}" src="{_e(uri)}" alt="{caption}">'
            if uri and uri.startswith("data:image/")
            else f'<div class="{cls} none">no {caption} picture</div>'
        )
        pics.append(f"<figure>{img}<figcaption>{caption}</figcaption></figure>")
    badges = "".join(
        f'<span class="badge b-{_e(b)}" title="{_e(BADGE_HELP.get(b, b))}">{_e(b)}</span>'
        for b in card.badges
    )
    rows = "".join(
        f"<tr><th>{_e(k)}</th><td>{_e(_number(card.scores.get(k)))}</td></tr>"
        for k in SORT_KEYS
        if _number(card.scores.get(k))
    )
    links = " ".join(
        f'<a href="{_e(url)}" rel="noreferrer noopener" target="_blank">{_e(kind)}</a>'
        for kind, url in card.links.items()
        if url.startswith(("https://", "http://"))
    )
    parts = [
        f"<article {head}>",
        f'<div class="pics">{"".join(pics)}</div>',
        f'<p class="id"><code>{_e(card.job_id or "(no job)")}</code> '
        f'<span class="status s-{_e(card.status)}">{_e(card.status)}</span></p>',
        f'<p class="src" title="{_e(card.source)}">{_e(card.source)}</p>',
    ]
    if badges:
        parts.append(f'<p class="badges">{badges}</p>')
    if card.reason:
        parts.append(f'<p class="reason">{_e(card.reason)}</p>')
    if card.note:
        parts.append(f'<p class="note">{_e(card.note)}</p>')
    if card.size:
        parts.append(f'<p class="size">{_e(card.size)}</p>')
    if rows:
        parts.append(f'<table class="scores">{rows}</table>')
    if links:
        parts.append(f'<p class="links">{links}</p>')
    if card.metadata is not None:
        text = json.dumps(card.metadata, indent=1, ensure_ascii=False, default=str)
        parts.append(f"<details><summary>metadata</summary><pre>{_e(text)}</pre></details>")
    parts.append("</article>\n")
    return "".join(parts)


def render_head(
    title: str,
    facts: list[str],
    counts: dict[str, int],
    badge_counts: dict[str, int],
    presign: int,
    now: float | None = None,
) -> str:
    """Everything before the cards: the policy, style, title, counts and the controls."""
    now = time.time() if now is None else now
    expires = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(now + presign))
    written = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(now))
    total = sum(counts.values())
    states = ", ".join(f"{n:,} {_e(s)}" for s, n in sorted(counts.items(), key=lambda x: -x[1]))
    clean = badge_counts.get("clean", 0)
    filters = [("all", total), *((b, badge_counts.get(b, 0)) for b in BADGE_ORDER)]
    filters.append(("clean", clean))
    buttons = "".join(
        f'<button type="button" data-filter="{_e(name)}" '
        f'aria-pressed="{str(name == "all").lower()}"'
        f' title="{_e(BADGE_HELP.get(name, _FILTER_HELP.get(name, "")))}">'
        f'{_e(name)} <span class="n">{n:,}</span></button>'
        for name, n in filters
    )
    sorts = "".join(
        f'<button type="button" data-sort="{_e(k)}">{_e(k)}</button>' for k in ("index", *SORT_KEYS)
    )
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_e(POLICY)}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<header>\n"
        f"<h1>{_e(title)}</h1>\n"
        + "".join(f'<p class="fact">{_e(f)}</p>\n' for f in facts)
        + f'<p class="fact">written {written}; links expire {expires} '
        f"(in {_e(_duration(presign))}); pictures are embedded: this file works offline</p>\n"
        f'<p id="counts"><b>{total:,}</b> rows: {states}</p>\n'
        f'<nav id="controls"><span>show</span> {buttons}<br><span>sort by</span> {sorts} '
        f'<span id="shown"></span></nav>\n</header>\n<main id="cards">\n'
    )


_FILTER_HELP = {"all": "every row", "clean": "succeeded, no badge"}


def render_tail() -> str:
    """Everything after the cards: the sorting and filtering script."""
    return f"</main>\n<script>{SCRIPT}</script>\n</body>\n</html>\n"


def badge_counts(cards: Iterable[Card]) -> dict[str, int]:
    """How many cards carry each badge, and "clean": succeeded with none."""
    out: dict[str, int] = {}
    for card in cards:
        for b in card.badges:
            out[b] = out.get(b, 0) + 1
        if card.status == "succeeded" and not card.badges:
            out["clean"] = out.get("clean", 0) + 1
    return out


def _duration(seconds: int) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds} seconds"


STYLE = (
    "body{font:14px/1.35 system-ui,sans-serif;margin:0;background:#f4f4f5;color:#18181b}"
    "header{padding:.8rem 1rem;background:#fff;border-bottom:1px solid #ddd;position:sticky;"
    "top:0;z-index:1}h1{font-size:1.2rem;margin:0 0 .3rem}.fact{margin:.1rem 0;color:#555}"
    "#counts{margin:.4rem 0}nav button{margin:.15rem;border:1px solid #bbb;background:#fff;"
    "border-radius:4px;padding:.1rem .5rem;cursor:pointer}nav button[aria-pressed=true],"
    "nav button[data-dir]{background:#18181b;color:#fff}nav span{color:#555}"
    "main{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:.8rem;"
    "padding:1rem}.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.5rem;"
    "overflow:hidden}.card[hidden]{display:none}.pics{display:flex;gap:.4rem}figure{margin:0;"
    "flex:1;min-width:0}figure img,.none{width:100%;display:block;background:#222;"
    "aspect-ratio:16/9;object-fit:contain}.none{color:#aaa;font-size:.8rem;display:flex;"
    "align-items:center;justify-content:center}figcaption{font-size:.75rem;color:#777}"
    ".id{margin:.3rem 0 0;word-break:break-all}.src{margin:0;color:#555;word-break:break-all;"
    "}.badge{display:inline-block;border-radius:999px;"
    "padding:0 .5rem;margin-right:.25rem;font-size:.8rem;color:#fff;background:#666}"
    ".b-failed{background:#b91c1c}.b-flicker{background:#c2410c}.b-static{background:#1d4ed8}"
    ".b-repaired{background:#7e22ce}.status{font-size:.8rem;color:#555}.s-failed,.s-invalid"
    "{color:#b91c1c}.reason{color:#b91c1c;white-space:pre-wrap;word-break:break-word;"
    "margin:.2rem 0}"
    ".note,.size{color:#777;font-size:.8rem;margin:.2rem 0}.scores{font-size:.8rem;"
    "border-collapse:collapse}.scores th{text-align:left;font-weight:normal;color:#555;"
    "padding-right:.8rem}pre{white-space:pre-wrap;word-break:break-all;font-size:.75rem}"
)

# Sorting and filtering. It reads only the cards' data-* attributes and moves or hides whole
# cards: it never builds markup from a string.
SCRIPT = """
"use strict";
const main = document.getElementById("cards");
const cards = Array.from(main.children);
let filter = "all";
function keep(c) {
  if (filter === "all") return true;
  const badges = c.dataset.badges ? c.dataset.badges.split(" ") : [];
  if (filter === "clean") return c.dataset.status === "succeeded" && badges.length === 0;
  return badges.includes(filter);
}
function apply() {
  let shown = 0;
  for (const c of cards) { c.hidden = !keep(c); if (!c.hidden) shown += 1; }
  document.getElementById("shown").textContent = shown + " shown";
}
for (const b of document.querySelectorAll("[data-filter]")) {
  b.addEventListener("click", () => {
    filter = b.dataset.filter;
    for (const o of document.querySelectorAll("[data-filter]")) {
      o.setAttribute("aria-pressed", String(o === b));
    }
    apply();
  });
}
for (const b of document.querySelectorAll("[data-sort]")) {
  b.addEventListener("click", () => {
    const key = b.dataset.sort;
    const first = key === "index" ? "asc" : "desc"; // highest score first
    const dir = b.dataset.dir ? (b.dataset.dir === "desc" ? "asc" : "desc") : first;
    for (const o of document.querySelectorAll("[data-sort]")) delete o.dataset.dir;
    b.dataset.dir = dir;
    b.title = dir === "desc" ? "highest first" : "lowest first";
    const value = (c) => (c.dataset[key] === "" ? null : Number(c.dataset[key]));
    const sorted = cards.slice().sort((x, y) => {
      const a = value(x), z = value(y);
      if (a === null || z === null || a === z) {
        if (a === null && z !== null) return 1; // rows without the score go last
        if (z === null && a !== null) return -1;
        return Number(x.dataset.index) - Number(y.dataset.index);
      }
      return dir === "desc" ? z - a : a - z;
    });
    main.append(...sorted);
  });
}
apply();
"""


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


POLICY = (
    f"default-src 'none'; img-src data:; style-src {_hash(STYLE)}; script-src {_hash(SCRIPT)}; "
    "base-uri 'none'; form-action 'none'"
)
