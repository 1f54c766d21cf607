"""What happens to each row of a bulk submission: the local step (check the row, read and
hash its image, which gives the job id without touching the network), the sorting of the
chunk's rows by what Redis knows of their jobs, and the upload of an input.

Rows naming s3://<bucket>/inputs/<sha256>.<ext> are not downloaded at all: the name gives the
hash (shared.inputs.addressed_sha256), and the worker checks the image before it runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from svdq.producer.inputs import put_input, resolve_input
from svdq.producer.manifest import Row
from svdq.shared.constants import input_key
from svdq.shared.errors import InvalidJobError
from svdq.shared.inputs import addressed_sha256, read_local
from svdq.shared.jobid import finalize
from svdq.shared.settings import Settings
from svdq.shared.spec import JobSpec
from svdq.shared.states import JobState
from svdq.shared.storage import ObjectStore

NO_URLS = "https:// inputs are not enabled in bulk; download the images and submit the folder"
# Local inputs up to this size are held between hashing and upload (a chunk of 256 holds at
# most 64 MiB); larger ones are read again when uploaded, and checked to be unchanged.
KEEP_INPUT_BYTES = 256 * 1024


@dataclass
class Prepared:
    """A row after the local step: a finalized spec plus what uploading it needs."""

    row: Row
    spec: JobSpec | None = None
    data: bytes | None = None  # input bytes still to upload (None: already in the store)
    # A large local file (over KEEP_INPUT_BYTES) is read again when it is uploaded rather
    # than held: a chunk of 20 MB photos would otherwise sit in memory until the upload.
    local: str | None = None
    error: str | None = None
    field: str | None = None


@dataclass
class Sorted:
    """A chunk's rows sorted by what they become, before anything is uploaded or sent."""

    counts: dict[str, int]  # the batch counters (producer.batch.COUNTERS) so far
    rejects: list[dict[str, Any]] = field(default_factory=list)  # report rows, not jobs
    members: list[tuple[str, str]] = field(default_factory=list)  # (job id, source) in batch
    # (row, what it is if it goes out): "submitted", "resubmitted", or "check" when Redis
    # knows nothing and result.json decides (it can only exist if the input did).
    candidates: list[tuple[Prepared, str]] = field(default_factory=list)


def sort_rows(
    prepared: list[Prepared],
    states: dict[str, JobState],
    busy: set[str],
    force: bool,
    counts: dict[str, int],
    emit: Callable[[Prepared, str, str | None], None],
) -> Sorted:
    """Decide each row from its job's state in Redis (`states`, by job id): a bad row or a
    non-image is rejected, a repeat of another row (in this chunk, or in `busy`: the chunk
    still uploading) points at that job, a job done or under way is not sent again (unless
    `force`), the rest are candidates. `emit(row, outcome, reason)` reports each decided row."""
    out = Sorted(counts)
    seen: set[str] = set()
    for p in prepared:
        if p.spec is None:
            kind = "skipped" if p.row.skipped else "invalid"
            counts[kind] += 1
            reject = {"source": p.row.source, "status": kind, "reason": p.error}
            if p.field:
                reject["field"] = p.field
            out.rejects.append(reject)
            emit(p, kind, p.error)
            continue
        job_id = str(p.spec.job_id)
        if job_id in seen or job_id in busy:
            # The same image with the same parameters twice: one job serves both rows; the
            # repeat gets its own report row, pointing at the job that serves it.
            counts["already_queued"] += 1
            reason = f"same content and parameters as job {job_id}"
            out.rejects.append(
                {"source": p.row.source, "status": "duplicate", "reason": reason, "job_id": job_id}
            )
            emit(p, "duplicate", reason)
            continue
        seen.add(job_id)
        out.members.append((job_id, p.row.source))
        state = states[job_id]
        if state is JobState.UNKNOWN:
            out.candidates.append((p, "submitted" if force else "check"))
        elif force or state in (JobState.FAILED, JobState.CANCELLED):
            out.candidates.append((p, "resubmitted"))
        elif state is JobState.SUCCEEDED:
            counts["already_done"] += 1
            emit(p, "already_done", None)
        else:  # queued, running, retrying
            counts["already_queued"] += 1
            emit(p, "already_queued", None)
    return out


@dataclass(frozen=True)
class RowPreparer:
    """Prepares rows and uploads their inputs for one bulk submission (thread-safe: it holds
    no state of its own between calls)."""

    settings: Settings
    store: ObjectStore
    random_seed: bool = False
    id_prefix: str = ""  # before every derived job id (the HTTP API: the token's id)

    def prepare(self, row: Row) -> Prepared:
        """Check the row, read and hash its image, fill in the job id; errors become the
        Prepared's `error` (a bad row is reported, never raised)."""
        if row.data is None:
            return Prepared(row, error=row.error or row.skipped, field=row.field)
        try:
            spec = JobSpec.from_dict(row.data)
            if spec.variant is None:
                # Both values below are ours and already valid: no second full check.
                spec = dataclasses.replace(spec, variant=self.settings.default_variant)
            uri, sha, data = self._read(spec.image)
            spec = dataclasses.replace(spec, image=uri)
            ready = finalize(spec, sha, random_seed=self.random_seed, id_prefix=self.id_prefix)
        except InvalidJobError as exc:
            return Prepared(row, error=str(exc), field=exc.field)
        local = not row.data["image"].lower().startswith("s3://")
        if local and data is not None and len(data) > KEEP_INPUT_BYTES:
            return Prepared(row, spec=ready, local=row.data["image"].removeprefix("file://"))
        # Small inputs stay in memory: no second read, and what is stored is what was hashed.
        return Prepared(row, spec=ready, data=data)

    def addressed(self, row: Row) -> bool:
        """Whether the row names an input already stored under its hash (nothing to read)."""
        image = (row.data or {}).get("image")
        if not isinstance(image, str) or not image.startswith("s3://"):
            return False
        return addressed_sha256(self.store.key_from_uri(image)) is not None

    def upload(self, p: Prepared) -> bool:
        """Put the input if it is not there; return whether it was there already."""
        assert p.spec
        key = str(self.store.key_from_uri(p.spec.image))
        data = p.data
        if p.local is not None:
            data = read_local(p.local, self.settings)
            if input_key(hashlib.sha256(data).hexdigest(), key.rsplit(".", 1)[-1]) != key:
                raise InvalidJobError(
                    f"image={p.local!r} changed while it was being submitted; run again",
                    field="image",
                )
        if data is None:
            return True
        existed = put_input(self.store, key, data)  # replaces bytes that do not match
        p.data = None  # free the bytes as soon as they are stored
        return existed

    def _read(self, image: str) -> tuple[str, str, bytes | None]:
        """(stored URI, sha256, bytes to upload or None when the input is already stored)."""
        if image.lower().startswith("s3://"):
            sha = addressed_sha256(self.store.key_from_uri(image))
            if sha:
                return image, sha, None
        found = resolve_input(image, self.store, self.settings, url_refusal=NO_URLS)
        return self.store.uri(found.key), found.sha256, found.data
