"""The output-format table: a format added there reaches validation, the JSON Schema, object
keys, content types and the command line with no other change (shared/formats.py says so)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from svdq.shared import formats

# Runs in a fresh interpreter: the table gets a `webm` row before anything reads it, as if
# the row had been written into shared/formats.py.
WITH_WEBM = """
import argparse, json
from svdq.shared import formats
formats.FORMATS = (
    *formats.FORMATS, formats.OutputFormat("webm", "clip.webm", "video/webm", "VP9 video")
)
from svdq.producer.jobflags import add_job_flags, spec_params
from svdq.shared.constants import output_key
from svdq.shared.errors import InvalidJobError
from svdq.shared.spec import JobSpec, json_schema

parser = argparse.ArgumentParser()
add_job_flags(parser)
params, _ = spec_params(parser.parse_args(["--format", "webm", "--format", "both"]))
try:
    JobSpec.from_dict({"image": "x.png", "formats": ["mov"]})
    rejected = ""
except InvalidJobError as exc:
    rejected = str(exc)
print(json.dumps({
    "formats": JobSpec.from_dict({"image": "x.png", **params}).formats,
    "schema": json_schema()["properties"]["formats"]["items"]["enum"],
    "rejected": rejected,
    "key": output_key("j1", "webm", "team"),
    "content_type": formats.output("webm").content_type,
    "suffix": formats.by_suffix(".WEBM").name,
    "help": parser.format_help(),
}))
"""


def test_a_new_format_is_one_table_row() -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITH_WEBM], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["formats"] == ["webm", "mp4", "gif"]  # validated, alias expanded, in order
    assert seen["schema"] == ["mp4", "gif", "webm"]
    assert "'mov' is not one of mp4, gif, webm" in seen["rejected"]
    assert seen["key"] == "team/results/j1/clip.webm"
    assert seen["content_type"] == "video/webm"
    assert seen["suffix"] == "webm"
    assert "webm (VP9 video)" in " ".join(seen["help"].split())  # --format's help


def test_the_table() -> None:
    assert formats.names() == ("mp4", "gif")
    assert formats.DEFAULT == ("mp4",)
    assert formats.expand("both") == ("mp4", "gif") and formats.expand("gif") == ("gif",)
    assert all(name in formats.names() for alias in formats.ALIASES.values() for name in alias)
    assert formats.suffixes() == (".mp4", ".gif")
    assert formats.by_suffix(".MP4") == formats.output("mp4")
    assert formats.by_suffix(".mov") is None
    assert formats.choices_help() == "mp4 (H.264 video), gif (animated GIF that loops) or both"


def test_unknown_output_names_the_allowed_ones() -> None:
    with pytest.raises(KeyError, match="'mov' is not one of mp4, gif, poster"):
        formats.output("mov")


def test_format_names_never_clash_with_the_poster_or_an_alias() -> None:
    names = [*formats.names(), formats.POSTER.name, *formats.ALIASES]
    assert len(names) == len(set(names))
    files = [formats.output(n).file_name for n in (*formats.names(), formats.POSTER.name)]
    assert len(files) == len(set(files))
