"""Every name svdq shares across processes: queues, tasks, Redis keys and object keys.

Keep them here and only here, so a reader can see in one screen what a job leaves behind.
"""

from __future__ import annotations

from dataclasses import dataclass

from svdq.shared import formats

# Celery task names.
TASK_GENERATE = "svdq.generate"

# One queue per variant (shared/variants.py's VARIANTS, svdq.auto among them).
QUEUE_PREFIX = "svdq."


def queue_for(variant: str) -> str:
    """The Celery queue a job for `variant` is published to."""
    return f"{QUEUE_PREFIX}{variant}"


# Redis keys (beside Celery's own queue and result keys).
KEY_PREFIX = "svdq:"


@dataclass(frozen=True)
class RedisKey:
    """One kind of Redis key: `job_key(job_id)` is the key for that job. `what` says what the
    key holds, so this file reads as the table of everything svdq leaves in Redis."""

    pattern: str  # after KEY_PREFIX; "{}" is the job id, batch id or worker name
    what: str

    def __call__(self, name: str) -> str:
        return KEY_PREFIX + self.pattern.format(name)


job_key = RedisKey(
    "job:{}", "Hash with the job's submission record (spec, queue, batch, submitted_at)."
)
batch_key = RedisKey(
    "batch:{}", "Hash with a bulk submission's record (source, created_at, counts as submitted)."
)
batch_jobs_key = RedisKey("batch:{}:jobs", "List of the batch's job ids, in submission order.")
batch_sources_key = RedisKey(
    "batch:{}:sources", "Hash job id -> the source (path, manifest line) it came from, for reports."
)
batch_rejects_key = RedisKey(
    "batch:{}:rejects",
    "List of JSON rows the batch could not submit (bad rows, non-images), for reports.",
)
cancel_key = RedisKey(
    "cancel:{}", "Set when a job is cancelled; the worker checks it before and during the job."
)


# The HTTP API (`svdq api`): its tokens, and who submitted what through it.
token_key = RedisKey(
    "token:{}",
    "Hash of one API token by its id: name, sha256 of the secret, quota, created_at (never "
    "the token itself).",
)
TOKENS_KEY = f"{KEY_PREFIX}tokens"  # set of every API token id
OWNER_FIELD = "owner"  # field of a batch's record (batch_key): the API token id that made it
job_owner_key = RedisKey("owner:job:{}", "String: the id of the API token that submitted the job.")
owner_open_key = RedisKey(
    "owner:{}:open",
    "Sorted set of the jobs an API token queued that were not yet seen to end (its quota).",
)
owner_pending_key = RedisKey(
    "owner:{}:pending",
    "String: quota slots an API token's running batch uploads hold for rows not yet queued.",
)
job_admit_key = RedisKey(
    "admit:job:{}",
    "String (short expiry): the API request queueing this job now; a concurrent identical "
    "request waits for it rather than queueing the job again.",
)
owner_batches_key = RedisKey(
    "owner:{}:batches",
    "Sorted set of an API token's batch ids by creation time (the console lists them).",
)
rate_key = RedisKey("rate:{}", "Counter of an API token's requests in the current minute.")

# Result callbacks go out from their own queue, so a slow receiver never holds a GPU worker.
TASK_CALLBACK = "svdq.callback"
QUEUE_CALLBACKS = "svdq.callbacks"
CALLBACK_SIGNATURE_HEADER = "X-Svdq-Signature"

# Delivery bookkeeping (worker/delivery.py): at least once in, effects exactly once out.
# hash outcome ("delivered", "gave_up") -> callbacks that ended so, for `svdq exporter`
CALLBACKS_KEY = f"{KEY_PREFIX}callbacks"
CALLBACK_QUEUED_FIELD = "callback_queued"  # field of a job's record: its callback was queued
CALLBACK_FIELD = "callback"  # field of a job's record (job_key): how its callback ended, JSON
DEAD_LETTER_KEY = f"{KEY_PREFIX}dead"  # hash job id -> JSON {spec, attempts, reason, dead_at}
# The unreadable messages among its entries, by when they were set aside (sorted set key ->
# time): the oldest beyond SVDQ_DEAD_LETTER_MAX are dropped, and counted here (a string).
DEAD_MESSAGES_KEY = f"{KEY_PREFIX}dead:messages"
DEAD_DROPPED_KEY = f"{KEY_PREFIX}dead:dropped"

callback_payload_key = RedisKey(
    "callback:{}",
    "String, JSON {url, payload}: the callback the worker that ended the job recorded (its "
    "own callback_url, its own end); `svdq callbacks` signs and sends only this.",
)
lease_key = RedisKey(
    "lease:{}", "String held (SET NX, TTL renewed) by the one delivery running the job right now."
)
deliveries_key = RedisKey(
    "deliveries:{}",
    "List of the job's delivery attempts, JSON {n, worker, pid, started_at, reason}.",
)
proc_key = RedisKey(
    "proc:{}",
    "Hash, by worker process id (worker/identity.process_id), of the jobs that process runs "
    "with overlap on: job id -> 'running' or 'hard limit' (its watchdog ended the process for "
    "that job). Kept for a while after the process dies: a lost attempt asks it whether it "
    "died alone (worker/sharing.py).",
)
# The reaper (worker/reaper.py): a dead host's job is queued again from its lease, not after
# the visibility timeout.
REAPER_LOCK_KEY = f"{KEY_PREFIX}reaper"  # string held (SET NX, TTL) by the one worker scanning
LAST_SEEN_KEY = f"{KEY_PREFIX}seen"  # hash worker name -> JSON {pid, proc, boot, at}: last beat
# hash kombu delivery tag -> JSON {worker, boot, at}: which worker start took that message
HOLDERS_KEY = f"{KEY_PREFIX}holders"
REQUEUED_FIELD = "requeued"  # field of a job's record (job_key): why the reaper queued it again

generations_key = RedisKey(
    "generations:{}",
    "Counter of full generations started for the job (a retry or a lost worker adds one).",
)


# Operations (worker/metrics.py writes, `svdq stats` and `svdq exporter` read).
# A worker's heartbeat hash outlives its last beat by SVDQ_HEARTBEAT_TTL seconds.
FINISHED_STREAM = f"{KEY_PREFIX}finished"  # stream: one entry per finished job, trimmed to 2 h

worker_key = RedisKey(
    "worker:{}",
    "Hash a live worker refreshes: variant, profile, gpu, queues, current job, metrics port.",
)


# A GPU's memory rarely changes under a worker: the rung that last worked on it is where a
# restarted worker starts (worker/resident.py), for this long after it last worked.
RUNG_MEMORY_TTL = 24 * 3600


def rung_key(host: str, gpu_index: int, variant: str) -> str:
    """String: the profile that last worked for `variant` on GPU `gpu_index` of `host`."""
    return f"{KEY_PREFIX}rung:{host}:{gpu_index}:{variant}"


# Task states beyond Celery's own.
STATE_PROGRESS = "PROGRESS"

# Object keys. Only job_id and output_prefix come from users; both pass the safe-alphabet
# check in shared.spec before they reach these functions.
INPUT_PREFIX = "inputs/"
RESULT_PREFIX = "results/"
RESULT_FILE = "result.json"
RESULT_CONTENT_TYPE = "application/json"
# The outputs' file names and content types are rows of the format table (shared/formats.py).


def input_key(sha256: str, ext: str) -> str:
    """Content-addressed key of an uploaded input image."""
    return f"{INPUT_PREFIX}{sha256}.{ext}"


def result_dir(job_id: str, output_prefix: str | None = None) -> str:
    """Folder holding one job's outputs; `output_prefix` (if any) goes in front."""
    base = f"{RESULT_PREFIX}{job_id}/"
    return f"{output_prefix.strip('/')}/{base}" if output_prefix else base


def output_key(job_id: str, kind: str, output_prefix: str | None = None) -> str:
    """Key of one output of a job: a format (`mp4`, `gif`, ...) or `poster`; KeyError else."""
    return result_dir(job_id, output_prefix) + formats.output(kind).file_name


def result_key(job_id: str, output_prefix: str | None = None) -> str:
    """Key of result.json, written last: its presence means the job is done."""
    return result_dir(job_id, output_prefix) + RESULT_FILE
