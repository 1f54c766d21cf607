"""Settings from SVDQ_* environment variables, read once into a frozen object.

This module is the one reader of the environment: nothing else in svdq parses an SVDQ_*
variable. Every variable is listed once, with its default and meaning, in shared/variables.py
(re-exported here); `svdq --help` prints them. A bad value fails at start-up naming the
variable (SVDQ_REDIS_URL's own checks: shared/redisurl.py).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from svdq.shared import shapes
from svdq.shared.errors import ConfigError
from svdq.shared.redisurl import checked_redis_url
from svdq.shared.variables import (
    DEFAULTS,
)
from svdq.shared.variants import VARIANTS

CALLBACK_NETWORKS = ("public", "private", "any")
WORKER_VARIANTS = tuple(v for v in VARIANTS if v != "auto")  # a worker loads a real model
T = TypeVar("T")


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker process alone reads: where the launcher put it and the operator's
    memory-profile overrides (None: not set, the profile table decides)."""

    gpu_index: int | None  # None: the first GPU, or no GPU
    worker_variant: str
    profile: str | None  # the rung to start at; checked against the table by worker.profiles
    dtype: str | None
    offload: str | None
    forward_chunking: bool | None
    decode_chunk_size: int | Literal["all"] | None
    compile: bool | None
    warm_shapes: tuple[shapes.Shape, ...]  # frames None: the loaded variant's own
    # SVDQ_COMPILE_CACHE; None: no cache. Checked (a writable directory) where a worker
    # starts (worker/launch.py), not here: producers read these settings too.
    compile_cache: Path | None = None

    def warm_shapes_for(self, frames: int) -> tuple[shapes.Resolved, ...]:
        """The shapes to warm for a variant that makes `frames` frames by default."""
        return shapes.resolve(self.warm_shapes, frames)

    def profile_changes(self) -> dict[str, object]:
        """The top rung's fields the operator changed, as Profile values ('all' frames at
        once is a decode chunk of None there)."""
        chosen: dict[str, object] = {
            "dtype": self.dtype,
            "offload": self.offload,
            "forward_chunking": self.forward_chunking,
            "decode_chunk_size": self.decode_chunk_size,
            "compile": self.compile,
        }
        changes: dict[str, object] = {f: v for f, v in chosen.items() if v is not None}
        if changes.get("decode_chunk_size") == "all":
            changes["decode_chunk_size"] = None
        return changes


@dataclass(frozen=True)
class Settings:
    """Everything svdq reads from the environment, checked once."""

    redis_url: str
    redis_master_name: str
    redis_sentinel_password: str
    redis_sentinel_timeout: float
    redis_min_replicas: int  # 0: no WAIT
    redis_wait_timeout: int
    store: str
    s3_endpoint: str | None
    s3_bucket: str
    s3_region: str
    s3_timeout: int
    local_dir: Path
    batch_dir: Path
    model_dir: Path
    default_variant: str
    allow_cpu: bool
    allow_urls: bool
    max_input_bytes: int
    max_input_pixels: int
    visibility_timeout: int
    task_time_limit: int
    overlap: int
    result_expires: int
    log_level: str
    metrics_host: str
    metrics_port: int
    lease_ttl: int
    heartbeat_ttl: int
    reap_interval: int
    max_deliveries: int
    dead_letter_max: int
    retry_backoff: int
    retry_backoff_max: int
    transient_budget: int
    restore_interval: int
    url_timeout: int
    callback_secret: str  # only `svdq callbacks` needs it
    callback_retries: int
    callback_backoff: int
    callback_timeout: int
    callback_networks: str
    api_host: str
    api_callback_networks: str
    api_port: int
    api_cors_origins: tuple[str, ...]
    api_rate_limit: int
    api_max_queued: int
    api_max_body_bytes: int
    api_max_batch_bytes: int
    api_max_batch_lines: int
    api_max_batches: int
    api_batch_idle: int
    api_max_connections: int
    api_presign_seconds: int
    worker: WorkerSettings

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read SVDQ_* from `env` (default: os.environ); raise ConfigError on a bad value.

        An unset or empty variable means its default.
        """
        env = os.environ if env is None else env

        def get(name: str) -> str:
            return env.get(name) or DEFAULTS[name]

        def integer(name: str) -> int:
            return _int(name, get(name))

        settings = cls(
            redis_url=checked_redis_url(get("SVDQ_REDIS_URL")),
            redis_master_name=get("SVDQ_REDIS_MASTER_NAME"),
            redis_sentinel_password=get("SVDQ_REDIS_SENTINEL_PASSWORD"),
            redis_sentinel_timeout=_seconds(
                "SVDQ_REDIS_SENTINEL_TIMEOUT", get("SVDQ_REDIS_SENTINEL_TIMEOUT")
            ),
            redis_min_replicas=_count("SVDQ_REDIS_MIN_REPLICAS", get("SVDQ_REDIS_MIN_REPLICAS")),
            redis_wait_timeout=integer("SVDQ_REDIS_WAIT_TIMEOUT"),
            store=_choice("SVDQ_STORE", get("SVDQ_STORE"), ("s3", "local")),
            s3_endpoint=get("SVDQ_S3_ENDPOINT") or None,
            s3_bucket=get("SVDQ_S3_BUCKET"),
            s3_region=get("SVDQ_S3_REGION"),
            s3_timeout=integer("SVDQ_S3_TIMEOUT"),
            local_dir=Path(get("SVDQ_LOCAL_DIR")).expanduser().resolve(),
            batch_dir=Path(get("SVDQ_BATCH_DIR")).expanduser(),
            model_dir=Path(get("SVDQ_MODEL_DIR")).expanduser(),
            default_variant=_choice("SVDQ_DEFAULT_VARIANT", get("SVDQ_DEFAULT_VARIANT"), VARIANTS),
            allow_cpu=_bool("SVDQ_ALLOW_CPU", get("SVDQ_ALLOW_CPU")),
            allow_urls=_bool("SVDQ_ALLOW_URLS", get("SVDQ_ALLOW_URLS")),
            max_input_bytes=integer("SVDQ_MAX_INPUT_BYTES"),
            max_input_pixels=integer("SVDQ_MAX_INPUT_PIXELS"),
            visibility_timeout=integer("SVDQ_VISIBILITY_TIMEOUT"),
            task_time_limit=integer("SVDQ_TASK_TIME_LIMIT"),
            overlap=_at_most("SVDQ_OVERLAP", integer("SVDQ_OVERLAP"), MAX_OVERLAP),
            result_expires=integer("SVDQ_RESULT_EXPIRES"),
            log_level=_choice(
                "SVDQ_LOG_LEVEL",
                get("SVDQ_LOG_LEVEL").upper(),
                ("DEBUG", "INFO", "WARNING", "ERROR"),
            ),
            metrics_host=_listen_host(get("SVDQ_METRICS_HOST")),
            metrics_port=integer("SVDQ_METRICS_PORT"),
            lease_ttl=_at_most("SVDQ_LEASE_TTL", integer("SVDQ_LEASE_TTL"), MAX_TIMER),
            heartbeat_ttl=_at_most("SVDQ_HEARTBEAT_TTL", integer("SVDQ_HEARTBEAT_TTL"), MAX_TIMER),
            reap_interval=_at_most("SVDQ_REAP_INTERVAL", integer("SVDQ_REAP_INTERVAL"), MAX_TIMER),
            max_deliveries=integer("SVDQ_MAX_DELIVERIES"),
            dead_letter_max=integer("SVDQ_DEAD_LETTER_MAX"),
            retry_backoff=integer("SVDQ_RETRY_BACKOFF"),
            retry_backoff_max=integer("SVDQ_RETRY_BACKOFF_MAX"),
            transient_budget=integer("SVDQ_TRANSIENT_BUDGET"),
            restore_interval=integer("SVDQ_RESTORE_INTERVAL"),
            url_timeout=integer("SVDQ_URL_TIMEOUT"),
            callback_secret=get("SVDQ_CALLBACK_SECRET"),
            callback_retries=integer("SVDQ_CALLBACK_RETRIES"),
            callback_backoff=integer("SVDQ_CALLBACK_BACKOFF"),
            callback_timeout=integer("SVDQ_CALLBACK_TIMEOUT"),
            callback_networks=_choice(
                "SVDQ_CALLBACK_NETWORKS", get("SVDQ_CALLBACK_NETWORKS"), CALLBACK_NETWORKS
            ),
            api_callback_networks=_choice(
                "SVDQ_API_CALLBACK_NETWORKS", get("SVDQ_API_CALLBACK_NETWORKS"), CALLBACK_NETWORKS
            ),
            api_host=_listen_host(get("SVDQ_API_HOST"), "SVDQ_API_HOST"),
            api_port=integer("SVDQ_API_PORT"),
            api_cors_origins=_origins(get("SVDQ_API_CORS_ORIGINS")),
            api_rate_limit=integer("SVDQ_API_RATE_LIMIT"),
            api_max_queued=integer("SVDQ_API_MAX_QUEUED"),
            api_max_body_bytes=integer("SVDQ_API_MAX_BODY_BYTES"),
            api_max_batch_bytes=integer("SVDQ_API_MAX_BATCH_BYTES"),
            api_max_batch_lines=integer("SVDQ_API_MAX_BATCH_LINES"),
            api_max_batches=integer("SVDQ_API_MAX_BATCHES"),
            api_batch_idle=integer("SVDQ_API_BATCH_IDLE"),
            api_max_connections=integer("SVDQ_API_MAX_CONNECTIONS"),
            api_presign_seconds=integer("SVDQ_API_PRESIGN_SECONDS"),
            worker=_worker_settings(env),
        )
        if settings.task_time_limit >= settings.visibility_timeout:
            raise ConfigError(
                f"SVDQ_TASK_TIME_LIMIT={settings.task_time_limit} must be below "
                f"SVDQ_VISIBILITY_TIMEOUT={settings.visibility_timeout}, or Redis hands a job "
                "that is still running to a second worker"
            )
        return settings


def _worker_settings(env: Mapping[str, str]) -> WorkerSettings:
    # Blanks around a value are dropped: these are often written by hand in unit files and
    # compose overrides, and " model" should not fail where "model" works.
    def get(name: str) -> str | None:
        return env.get(name, "").strip() or DEFAULTS[name] or None

    def read(name: str, parse: Callable[[str, str], T]) -> T | None:
        """The parsed value, or None when the variable is unset."""
        raw = get(name)
        return None if raw is None else parse(name, raw)

    def one_of(*allowed: str) -> Callable[[str, str], str]:
        return lambda name, value: _choice(name, value, allowed)

    return WorkerSettings(
        gpu_index=read("SVDQ_GPU_INDEX", _index),
        worker_variant=_choice(
            "SVDQ_WORKER_VARIANT", get("SVDQ_WORKER_VARIANT") or "", WORKER_VARIANTS
        ),
        profile=get("SVDQ_PROFILE"),
        dtype=read("SVDQ_DTYPE", one_of("float16", "float32")),
        offload=read("SVDQ_OFFLOAD", one_of("none", "model", "sequential")),
        forward_chunking=read("SVDQ_FORWARD_CHUNKING", _bool),
        decode_chunk_size=read("SVDQ_DECODE_CHUNK_SIZE", _chunk),
        compile=read("SVDQ_COMPILE", _bool),
        warm_shapes=shapes.parse("SVDQ_WARM_SHAPES", get("SVDQ_WARM_SHAPES") or ""),
        compile_cache=read("SVDQ_COMPILE_CACHE", _directory),
    )


def _directory(name: str, value: str) -> Path:
    """A directory's path, absolute (the worker's children may run elsewhere)."""
    return Path(value).expanduser().resolve()


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed: one of {', '.join(allowed)}")
    return value


def _origins(value: str) -> tuple[str, ...]:
    """CORS origins: scheme://host[:port] each, comma-separated (empty: CORS off)."""
    origins = tuple(o.strip().rstrip("/") for o in value.split(",") if o.strip())
    for origin in origins:
        if not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?", origin):
            raise ConfigError(
                f"SVDQ_API_CORS_ORIGINS has {origin!r}: allowed are origins such as "
                "https://console.example.com, comma-separated"
            )
    return origins


def _listen_host(value: str, name: str = "SVDQ_METRICS_HOST") -> str:
    """An address to listen on: an IP literal (0.0.0.0, ::, 127.0.0.1) or a host name."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?", value):
        return value
    raise ConfigError(
        f"{name}={value!r} is not allowed: an IP address or host name to listen "
        "on, e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every interface, in a container)"
    )


def _bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={value!r} is not allowed: 1/0, true/false, yes/no or on/off")


def _count(name: str, value: str) -> int:
    if not value.strip().isdigit():
        raise ConfigError(f"{name}={value!r} is not allowed: a whole number, 0 or more")
    return int(value)


# The most seconds SVDQ_LEASE_TTL, SVDQ_HEARTBEAT_TTL and SVDQ_REAP_INTERVAL may be: each
# becomes a threading wait in the worker, and a wait past threading.TIMEOUT_MAX raises
# OverflowError in its thread, which then dies without a word. A day is far past any use.
MAX_TIMER = 86400


# Jobs one worker may hold at once (SVDQ_OVERLAP): one on the GPU and the others fetching or
# finishing; past 4 they only hold RAM (frames of each) with no gain in GPU time.
MAX_OVERLAP = 4


def _at_most(name: str, number: int, most: int) -> int:
    if number > most:
        raise ConfigError(f"{name}={number!r} is not allowed: a whole number from 1 to {most}")
    return number


def _int(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not allowed: a whole number") from None
    if number <= 0:
        raise ConfigError(f"{name}={value!r} is not allowed: a whole number above 0")
    return number


def _seconds(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not allowed: a number of seconds") from None
    if not 0 < number <= 60:
        raise ConfigError(f"{name}={value!r} is not allowed: seconds above 0, at most 60")
    return number


def _index(name: str, value: str) -> int:
    if not value.isdigit():
        raise ConfigError(f"{name}={value!r} is not allowed: a GPU index, a whole number from 0")
    return int(value)


def _chunk(name: str, value: str) -> int | Literal["all"]:
    if value == "all":
        return "all"
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{name}={value!r} is not allowed: a whole number above 0, or 'all'")
    return int(value)
