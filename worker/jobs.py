"""One job, start to finish: fetch, fit, generate, encode, upload, then result.json last."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import UTC, datetime
from typing import Any

from svdq.shared import formats, records
from svdq.shared.constants import RESULT_CONTENT_TYPE, output_key, result_key
from svdq.shared.errors import InvalidJobError, TransientError
from svdq.shared.images import check_image, fit, open_image, to_rgb
from svdq.shared.inputs import addressed_sha256, read_stored
from svdq.shared.retry import with_retries
from svdq.shared.settings import Settings
from svdq.shared.spec import JobResult, JobSpec
from svdq.shared.states import JobState
from svdq.shared.storage import ObjectStore
from svdq.worker import engine, export, quality
from svdq.worker.delivery import on_the_store
from svdq.worker.models import LoadedModel

log = logging.getLogger(__name__)


def now() -> str:
    """UTC timestamp for records."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def existing_result(store: ObjectStore, spec: JobSpec) -> dict[str, Any] | None:
    """The recorded result if this job already finished (result.json is the commit marker).

    Only a valid marker counts (shared/records.py): an invalid one is set aside, logged, and
    the job runs again. Called under the job's lease, so no other delivery is writing it."""
    assert spec.job_id
    with on_the_store("looking for result.json"):
        return _existing_result(store, spec)


def _existing_result(store: ObjectStore, spec: JobSpec) -> dict[str, Any] | None:
    assert spec.job_id
    record, problem = records.read_result(store, spec.job_id, spec.output_prefix)
    if problem is not None:
        kept = records.set_aside(store, spec.job_id, spec.output_prefix)
        log.warning(
            "job %s: its result.json is not valid (%s): moved to %s; the job runs again",
            spec.job_id,
            problem,
            kept,
        )
    return record


def fetch_input(store: ObjectStore, settings: Settings, uri: str) -> bytes:
    """The input image's bytes, from this worker's store only, checked against the sha256 its
    content address (inputs/<sha256>.<ext>) names: bytes replaced after the upload would make
    the job's record lie about what it was made from. A mismatch is bad input (never retried:
    the same bytes fail the same way); submitting the image again uploads it again."""
    outside = f"this worker's store ({store.uri('')}); submit through svdq so it is uploaded first"
    data = read_stored(store, uri, outside)
    named = addressed_sha256(store.key_from_uri(uri))
    actual = hashlib.sha256(data).hexdigest()
    if named is not None and actual != named:
        raise InvalidJobError(
            f"image={uri!r} holds bytes with sha256 {actual}, but its content address names "
            f"sha256 {named}: the stored input was replaced after it was uploaded. Submit the "
            "image again (svdq uploads it again when the stored checksum does not match)",
            field="image",
        )
    return data


# One pool for the process's life (threads start on first use, in the pool child): an MP4,
# a GIF and a poster go up at once, without starting threads for every job.
_UPLOADS = ThreadPoolExecutor(max_workers=3, thread_name_prefix="upload")


def _budget(settings: Settings, upload_by: float | None) -> float:
    """Seconds an upload may retry: the transient budget, and with overlap on no later than
    the job's soft limit (`upload_by`, time.time()): a thread waiting on its uploads is in a
    C-level wait the soft limit cannot reach (worker/overlap.py), so the retries stop there."""
    if upload_by is None:
        return float(settings.transient_budget)
    return max(0.0, min(float(settings.transient_budget), upload_by - time.time()))


def upload_outputs(
    store: ObjectStore,
    settings: Settings,
    spec: JobSpec,
    blobs: dict[str, bytes],
    upload_by: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Upload every output at once (one thread each: they are independent, and a round trip
    to the store costs more than the work); return their records. result.json comes after."""
    assert spec.job_id
    keys = {kind: output_key(spec.job_id, kind, spec.output_prefix) for kind in blobs}
    # Set when this job stops waiting for its uploads (its soft time limit came): a thread
    # still retrying gives up at its next pause, so it neither writes over a later delivery's
    # clip nor holds one of the pool's threads from the next job.
    abandoned = threading.Event()

    def pause(seconds: float) -> None:
        if abandoned.wait(seconds):
            raise TransientError("upload abandoned: the job stopped waiting for it")

    def put(kind: str) -> None:
        # A storage outage retries this upload only, for as long as the job's transient
        # budget (or, before that, its soft time limit) allows: the frames are already made,
        # and making them again is what a store outage must not cost.
        with_retries(
            functools.partial(
                store.put_bytes, keys[kind], blobs[kind], formats.output(kind).content_type
            ),
            f"upload of {keys[kind]}",
            settings,
            tries=None,
            sleep=pause,
            budget=_budget(settings, upload_by),
        )

    futures = [_UPLOADS.submit(put, kind) for kind in blobs]
    try:
        wait(futures)  # every upload ends before result.json can follow, or the job fails
    except BaseException:
        abandoned.set()
        raise
    for future in futures:
        future.result()  # the first failure, if any
    return {
        kind: {
            "key": keys[kind],
            "uri": store.uri(keys[kind]),
            "bytes": len(blob),
            "sha256": hashlib.sha256(blob).hexdigest(),
            "content_type": formats.output(kind).content_type,
        }
        for kind, blob in blobs.items()
    }


def run_job(
    spec: JobSpec,
    model: LoadedModel,
    store: ObjectStore,
    settings: Settings,
    worker_name: str,
    progress: engine.Progress | None = None,
    on_step_down: Callable[[str, str], None] = lambda before, after: None,
    still_ours: Callable[[], None] = lambda: None,
    gpu: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext,
    upload_by: float | None = None,
) -> dict[str, Any]:
    """Run `spec` (already checked) and return its result record, written last as result.json.

    The caller has looked for the commit marker under the job's lease (worker.delivery), so
    this always generates. `still_ours()` raises when another delivery took the job
    (worker/delivery.Guard): called right before the uploads and before result.json. `gpu()`
    encloses the generation (the worker's GPU clock, worker/gpuclock.py: the time the GPU is
    busy; with overlap, also the process's GPU lock and the variant check, worker/overlap.py:
    every try of the generation runs inside it). `upload_by` (with overlap on: the job's soft
    limit, time.time()) ends upload retries there (`_budget`).
    """
    assert spec.job_id
    started_at, t0 = now(), time.perf_counter()
    timings: dict[str, float] = {}

    def phase(name: str, since: float) -> float:
        moment = time.perf_counter()
        timings[name] = round(moment - since, 4)
        return moment

    # The parameters come from the model as the GPU phase finds it (stepdown.generate): with
    # overlap another job's variant switch or step-down may change it before then.
    with on_the_store("input fetch"):
        data = fetch_input(store, settings, spec.image)
    t = phase("fetch", t0)
    limits = {"max_bytes": settings.max_input_bytes, "max_pixels": settings.max_input_pixels}
    info = check_image(data, source=spec.image, **limits)
    source = to_rgb(open_image(data, source=spec.image, **limits))
    fitted = fit(source, spec.width, spec.height, spec.resize)
    t = phase("preprocess", t)
    if progress:
        progress("denoise", 0, spec.num_inference_steps)
    # Every generation (one, or the job's candidates and repairs: worker/quality.py) runs
    # inside gpu() through the step-down: out of memory steps down the profile ladder and
    # retries; `model` ends on the rung used. Each clip is scored on the frames as delivered,
    # against the input as fitted (shared/scores.py), outside gpu(); the best is kept. What
    # ran it (`kept.ran`) was read inside gpu(), before another job could change the model.
    kept = quality.generate(model, settings, spec, fitted, progress, on_step_down, gpu)
    frames_u8, params, clip_scores, attempts = kept.frames, kept.params, kept.scores, kept.attempts
    ran = kept.ran
    timings.update({k: round(v, 4) for k, v in kept.timings.items()})
    t = time.perf_counter()
    if progress:
        progress("encode", spec.num_inference_steps, spec.num_inference_steps)
    blobs = {formats.POSTER.name: export.encode_poster(frames_u8[0])}
    for kind in spec.formats:  # each a row of shared/formats.py, encoded by its ENCODERS entry
        blobs[kind] = export.encode(kind, frames_u8, params.output_fps)
    for index, other in kept.others.items():  # --keep-candidates: candidates/<i>.mp4
        blobs[formats.candidate_kind(index)] = export.encode("mp4", other, params.output_fps)
    t = phase("encode", t)
    if progress:
        progress("upload", spec.num_inference_steps, spec.num_inference_steps)
    still_ours()
    with on_the_store("upload"):
        outputs = upload_outputs(store, settings, spec, blobs, upload_by)
    phase("upload", t)
    timings["total"] = round(time.perf_counter() - t0, 4)
    result = JobResult(
        job_id=spec.job_id,
        status=JobState.SUCCEEDED,
        spec=spec.to_dict(),
        variant=params.variant,
        model=ran["model"],
        seed=params.seed,
        num_frames=int(frames_u8.shape[0]),
        width=int(frames_u8.shape[2]),
        height=int(frames_u8.shape[1]),
        output_fps=params.output_fps,
        decode_chunk_size=params.decode_chunk_size,
        profile=ran["profile"],
        attempts=attempts,
        tries=kept.tries,
        quality=kept.quality,
        worker=worker_name,
        input={
            "uri": spec.image,
            "sha256": hashlib.sha256(data).hexdigest(),
            "format": info.format,
            "width": info.width,
            "height": info.height,
        },
        outputs=outputs,
        timings=timings,
        motion=clip_scores["motion"],
        scores=clip_scores,
        started_at=started_at,
        finished_at=now(),
        note=ran["note"],
    ).to_dict()
    record = json.dumps(result, indent=2).encode()
    marker = result_key(spec.job_id, spec.output_prefix)
    still_ours()
    with on_the_store(f"upload of {marker}"):
        with_retries(
            lambda: store.put_bytes(marker, record, RESULT_CONTENT_TYPE),
            f"upload of {marker}",
            settings,
            tries=None,
            budget=_budget(settings, upload_by),
        )
    return result
