"""Every SVDQ_* environment variable, once: its default and what it means, in four tables —
VARIABLES (everyone), WORKER_VARIABLES (set by `svdq worker` for each worker it starts),
PROFILE_VARIABLES (the operator's memory-profile overrides) and COMPILE_VARIABLES (what a
compiled worker compiles). shared/settings.py reads them; `svdq --help` prints them
(`describe_variables`)."""

from __future__ import annotations

from pathlib import Path

from svdq.shared import shapes

DEFAULT_MODEL_DIR = str(Path.home() / ".cache" / "svdq" / "models")
DEFAULT_BATCH_DIR = str(Path.home() / ".local" / "state" / "svdq" / "batches")

# name -> (default, meaning). The order is the order `svdq --help` shows them in.
VARIABLES: dict[str, tuple[str, str]] = {
    "SVDQ_REDIS_URL": (
        "redis://127.0.0.1:6379/0",
        "broker and result backend: redis://, rediss://, unix://, or Redis Sentinel as "
        "sentinel://[:MASTER_PASSWORD@]host1:26379/0;sentinel://host2:26379 (TLS: ssl_* query "
        "parameters on the first, as for rediss://)",
    ),
    "SVDQ_REDIS_MASTER_NAME": ("svdq", "with sentinel://: the master's name in sentinel.conf"),
    "SVDQ_REDIS_SENTINEL_PASSWORD": ("", "with sentinel://: the sentinels' own password"),
    "SVDQ_REDIS_SENTINEL_TIMEOUT": (
        "1",
        "with sentinel://: seconds one question to one sentinel may take (connect or answer) "
        "before the next sentinel is asked; a sentinel that hangs costs each process this once",
    ),
    "SVDQ_REDIS_MIN_REPLICAS": (
        "0",
        "replicas that must acknowledge every submit (Redis WAIT) before it counts as queued; "
        "0: the master's reply is enough (a failover may lose the last jobs)",
    ),
    "SVDQ_REDIS_WAIT_TIMEOUT": (
        "2",
        "seconds one WAIT for SVDQ_REDIS_MIN_REPLICAS waits; 3 tries before a submit fails",
    ),
    "SVDQ_STORE": ("s3", "where inputs and clips live: s3, or local (a folder, one machine)"),
    "SVDQ_S3_ENDPOINT": ("", "S3-compatible endpoint URL (MinIO, moto); empty means AWS"),
    "SVDQ_S3_BUCKET": ("svdq", "bucket for inputs/ and results/"),
    "SVDQ_S3_REGION": ("us-east-1", "S3 region"),
    "SVDQ_S3_TIMEOUT": (
        "10",
        "seconds one S3 try may wait to connect, and for each answer; 3 tries in all, so a "
        "store that never answers fails a call (a transient fault) within about 6× this",
    ),
    "SVDQ_LOCAL_DIR": ("./svdq-store", "folder used when SVDQ_STORE=local"),
    "SVDQ_BATCH_DIR": (
        DEFAULT_BATCH_DIR,
        "where `svdq bulk` keeps each batch's journal (<batch>.jsonl: every job's spec), so a "
        "batch whose Redis record was lost can be resubmitted from it",
    ),
    "SVDQ_MODEL_DIR": (DEFAULT_MODEL_DIR, "model weights: <dir>/<variant>/ (tiny is built here)"),
    "SVDQ_DEFAULT_VARIANT": ("auto", "variant a job gets when it names none"),
    "SVDQ_ALLOW_CPU": ("0", "1 lets a CPU-only worker run real variants (very slow)"),
    "SVDQ_ALLOW_URLS": ("0", "1 lets jobs name https:// images for the worker to fetch"),
    "SVDQ_MAX_INPUT_BYTES": (str(20 * 1024 * 1024), "largest input image file accepted"),
    "SVDQ_MAX_INPUT_PIXELS": ("40000000", "largest input image (width × height) accepted"),
    "SVDQ_VISIBILITY_TIMEOUT": ("7200", "seconds before Redis redelivers an unacknowledged job"),
    "SVDQ_TASK_TIME_LIMIT": ("3600", "seconds a job may run before it is killed"),
    "SVDQ_OVERLAP": (
        "1",
        "jobs one worker holds at once, 1 to 4. 1: prefork, one job at a time (Celery's time "
        "limits and lost-child detection). 2: one process, Celery's threads pool, the model "
        "loaded once; the next job is fetched, fitted and denoising while the last one "
        "encodes and uploads (the GPU phase runs one job at a time under a lock). Costs a "
        "second job's frames in RAM and a CPU core more per GPU; time limits become a "
        "per-step check and a watchdog that restarts the worker",
    ),
    "SVDQ_RESULT_EXPIRES": ("604800", "seconds task states are kept in Redis"),
    "SVDQ_LOG_LEVEL": ("INFO", "worker log level"),
    "SVDQ_METRICS_HOST": (
        "127.0.0.1",
        "address the worker's /metrics and `svdq exporter` listen on; 0.0.0.0 in containers "
        "(compose and Kubernetes set it) so Prometheus can reach them",
    ),
    "SVDQ_METRICS_PORT": (
        "9810",
        "worker Prometheus port; the worker for GPU i serves on this + i",
    ),
    "SVDQ_LEASE_TTL": ("60", "seconds a job's lease lives unless its worker renews it"),
    "SVDQ_HEARTBEAT_TTL": (
        "30",
        "seconds a worker's heartbeat outlives its last beat (it beats every third of this)",
    ),
    "SVDQ_REAP_INTERVAL": (
        "15",
        "seconds between a worker's scans for jobs of dead hosts (lease expired, heartbeat "
        "gone): such a job is queued again within max(SVDQ_LEASE_TTL, SVDQ_HEARTBEAT_TTL) + "
        "this",
    ),
    "SVDQ_MAX_DELIVERIES": ("3", "deliveries of one job before it goes to the dead-letter list"),
    "SVDQ_DEAD_LETTER_MAX": (
        "10000",
        "unreadable messages kept on the dead-letter list; the oldest beyond it are dropped "
        "(counted in svdq_dead_letter_dropped_total). Dead jobs are never dropped",
    ),
    "SVDQ_RETRY_BACKOFF": ("2", "first wait in seconds before a transient fault is retried"),
    "SVDQ_RETRY_BACKOFF_MAX": ("120", "longest wait in seconds between transient retries"),
    "SVDQ_TRANSIENT_BUDGET": (
        "900",
        "seconds a job keeps retrying transient faults (store, Redis) before it is "
        "dead-lettered; these retries never use up SVDQ_MAX_DELIVERIES",
    ),
    "SVDQ_RESTORE_INTERVAL": ("60", "seconds between scans that requeue jobs of dead workers"),
    "SVDQ_URL_TIMEOUT": ("20", "seconds an https:// input download may take in all"),
    "SVDQ_CALLBACK_SECRET": ("", "key for the HMAC-SHA256 signature on result callbacks"),
    "SVDQ_CALLBACK_RETRIES": ("8", "times a failed result callback is retried"),
    "SVDQ_CALLBACK_BACKOFF": ("2", "first wait in seconds before a callback retry (doubles)"),
    "SVDQ_CALLBACK_TIMEOUT": ("10", "seconds one callback POST may take in all, answer included"),
    "SVDQ_CALLBACK_NETWORKS": (
        "private",
        "where callbacks may go: public, private (public + 10/8, 172.16/12, 192.168/16, fc00::/7)"
        " or any (also loopback); link-local (169.254.169.254) never",
    ),
    "SVDQ_API_CALLBACK_NETWORKS": (
        "public",
        "where an API caller's callback_url may go (checked at submit): public, private or "
        "any; the workers' SVDQ_CALLBACK_NETWORKS still applies when the callback is sent",
    ),
    # `svdq api` (producer/api/): TLS is the reverse proxy's job, so it binds loopback.
    "SVDQ_API_HOST": ("127.0.0.1", "address `svdq api` listens on (0.0.0.0 in containers)"),
    "SVDQ_API_PORT": ("8000", "port `svdq api` listens on"),
    "SVDQ_API_CORS_ORIGINS": (
        "",
        "origins (comma-separated) the HTTP API allows cross-origin requests from; unset: none",
    ),
    "SVDQ_API_RATE_LIMIT": ("120", "requests per minute one API token may make"),
    "SVDQ_API_MAX_QUEUED": ("1000", "queued jobs one API token may have (svdq token --quota)"),
    "SVDQ_API_MAX_BODY_BYTES": (
        str(21 * 1024 * 1024),
        "largest request body the HTTP API reads (a job with its image); batches excepted",
    ),
    "SVDQ_API_MAX_BATCHES": (
        "4",
        "batch uploads (POST /v1/batches) one token may have open at once",
    ),
    "SVDQ_API_BATCH_IDLE": ("30", "seconds a batch upload may send nothing before it is cut off"),
    "SVDQ_API_MAX_CONNECTIONS": (
        "4096",
        "open connections and tasks `svdq api` serves at once (uvicorn limit_concurrency)",
    ),
    "SVDQ_API_MAX_BATCH_LINES": ("100000", "lines one POST /v1/batches body may have"),
    "SVDQ_API_MAX_BATCH_BYTES": (
        str(256 * 1024 * 1024),
        "largest JSON-lines body POST /v1/batches reads (streamed, never held whole)",
    ),
    "SVDQ_API_PRESIGN_SECONDS": ("3600", "lifetime of the result links the HTTP API hands out"),
}


# Set by `svdq worker` in the environment of each worker it starts; read by that worker alone.
WORKER_VARIABLES: dict[str, tuple[str, str]] = {
    "SVDQ_GPU_INDEX": (
        "",
        "the GPU (NVML index) a worker runs on; set by svdq worker. Unset: the first GPU",
    ),
    "SVDQ_WORKER_VARIANT": ("tiny", "the variant a worker loads first; set by svdq worker"),
}

# The operator's changes to the worker's memory-profile ladder. Unset means "what the card's
# profile table row says"; `svdq plan` shows the outcome.
PROFILE_VARIABLES: dict[str, tuple[str, str]] = {
    "SVDQ_PROFILE": ("", "start the worker's profile ladder at this row (svdq plan lists them)"),
    "SVDQ_DTYPE": ("", "override the top profile's dtype: float16 or float32"),
    "SVDQ_OFFLOAD": ("", "override the top profile's offload: none, model or sequential"),
    "SVDQ_FORWARD_CHUNKING": ("", "override the top profile's UNet forward chunking: 1/0"),
    "SVDQ_DECODE_CHUNK_SIZE": ("", "override the top profile's decode chunk: a number or 'all'"),
    "SVDQ_COMPILE": ("", "override the top profile's torch.compile of the UNet: 1/0"),
}

# What a worker whose rung compiles the UNet compiles at load: every other shape runs eagerly.
COMPILE_VARIABLES: dict[str, tuple[str, str]] = {
    "SVDQ_WARM_SHAPES": (
        shapes.DEFAULT,
        "the clip shapes a compiled worker compiles at load (warm-up, per shape); jobs of any "
        f"other shape run eagerly, never compiling: {shapes.ALLOWED}",
    ),
    "SVDQ_COMPILE_CACHE": (
        "",
        "a writable directory (a volume) where a compiled worker keeps torch.compile's caches "
        "across restarts, so a restart warms up in seconds; one folder per torch version, "
        "card, variant and dtype. Unset: compile at every start",
    ),
}

# Every variable's default, written once (in the tables above).
DEFAULTS: dict[str, str] = {
    name: default
    for table in (VARIABLES, WORKER_VARIABLES, PROFILE_VARIABLES, COMPILE_VARIABLES)
    for name, (default, _) in table.items()
}


def describe_variables() -> str:
    """The SVDQ_* variables with defaults, for `svdq --help`."""
    width = max(map(len, DEFAULTS))

    def rows(table: dict[str, tuple[str, str]]) -> list[str]:
        return [
            f"  {name:<{width}}  {meaning} [default: {default or 'unset'}]"
            for name, (default, meaning) in table.items()
        ]

    return "\n".join(
        [
            *rows(VARIABLES),
            "",
            "set by svdq worker for each worker it starts:",
            *rows(WORKER_VARIABLES),
            "",
            "worker memory profile overrides:",
            *rows(PROFILE_VARIABLES),
            "",
            "compiled workers:",
            *rows(COMPILE_VARIABLES),
        ]
    )
