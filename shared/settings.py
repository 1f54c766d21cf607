"""Settings from SVDQ_* environment variables, read once into a frozen object.

Every variable is listed in VARIABLES with its default and meaning; `svdq --help` prints them.
A bad value fails at start-up naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from svdq.shared.errors import ConfigError
from svdq.shared.variants import VARIANTS

DEFAULT_MODEL_DIR = str(Path.home() / ".cache" / "svdq" / "models")

# name -> (default, meaning). The order is the order `svdq --help` shows them in.
VARIABLES: dict[str, tuple[str, str]] = {
    "SVDQ_REDIS_URL": (
        "redis://127.0.0.1:6379/0",
        "broker and result backend (redis:// or rediss://)",
    ),
    "SVDQ_STORE": ("s3", "where inputs and clips live: s3, or local (a folder, one machine)"),
    "SVDQ_S3_ENDPOINT": ("", "S3-compatible endpoint URL (MinIO, moto); empty means AWS"),
    "SVDQ_S3_BUCKET": ("svdq", "bucket for inputs/ and results/"),
    "SVDQ_S3_REGION": ("us-east-1", "S3 region"),
    "SVDQ_LOCAL_DIR": ("./svdq-store", "folder used when SVDQ_STORE=local"),
    "SVDQ_MODEL_DIR": (DEFAULT_MODEL_DIR, "model weights: <dir>/<variant>/ (tiny is built here)"),
    "SVDQ_DEFAULT_VARIANT": ("auto", "variant a job gets when it names none"),
    "SVDQ_ALLOW_CPU": ("0", "1 lets a CPU-only worker run real variants (very slow)"),
    "SVDQ_ALLOW_URLS": ("0", "1 lets jobs name https:// images for the worker to fetch"),
    "SVDQ_MAX_INPUT_BYTES": (str(20 * 1024 * 1024), "largest input image file accepted"),
    "SVDQ_MAX_INPUT_PIXELS": ("40000000", "largest input image (width × height) accepted"),
    "SVDQ_VISIBILITY_TIMEOUT": ("7200", "seconds before Redis redelivers an unacknowledged job"),
    "SVDQ_TASK_TIME_LIMIT": ("3600", "seconds a job may run before it is killed"),
    "SVDQ_RESULT_EXPIRES": ("604800", "seconds task states are kept in Redis"),
    "SVDQ_LOG_LEVEL": ("INFO", "worker log level"),
    "SVDQ_METRICS_PORT": (
        "9810",
        "worker Prometheus port; the worker for GPU i serves on this + i",
    ),
    "SVDQ_LEASE_TTL": ("60", "seconds a job's lease lives unless its worker renews it"),
    "SVDQ_MAX_DELIVERIES": ("3", "deliveries of one job before it goes to the dead-letter list"),
    "SVDQ_RETRY_BACKOFF": ("2", "first wait in seconds before a transient fault is retried"),
    "SVDQ_RETRY_BACKOFF_MAX": ("120", "longest wait in seconds between transient retries"),
    "SVDQ_RESTORE_INTERVAL": ("60", "seconds between scans that requeue jobs of dead workers"),
    "SVDQ_URL_TIMEOUT": ("20", "seconds an https:// input download may take in all"),
    "SVDQ_CALLBACK_SECRET": ("", "key for the HMAC-SHA256 signature on result callbacks"),
    "SVDQ_CALLBACK_RETRIES": ("8", "times a failed result callback is retried"),
    "SVDQ_CALLBACK_BACKOFF": ("2", "first wait in seconds before a callback retry (doubles)"),
    "SVDQ_CALLBACK_NETWORKS": (
        "private",
        "where callbacks may go: public, private (public + 10/8, 172.16/12, 192.168/16, fc00::/7)"
        " or any (also loopback); link-local (169.254.169.254) never",
    ),
}


@dataclass(frozen=True)
class Settings:
    """Everything svdq reads from the environment, checked once."""

    redis_url: str
    store: str
    s3_endpoint: str | None
    s3_bucket: str
    s3_region: str
    local_dir: Path
    model_dir: Path
    default_variant: str
    allow_cpu: bool
    allow_urls: bool
    max_input_bytes: int
    max_input_pixels: int
    visibility_timeout: int
    task_time_limit: int
    result_expires: int
    log_level: str
    metrics_port: int = 9810
    # Delivery settings (defaults here too, so code that builds Settings by hand keeps working).
    lease_ttl: int = 60
    max_deliveries: int = 3
    retry_backoff: int = 2
    retry_backoff_max: int = 120
    restore_interval: int = 60
    url_timeout: int = 20
    # Result callbacks (worker/callbacks.py); the secret is only needed by `svdq callbacks`.
    callback_secret: str = ""
    callback_retries: int = 8
    callback_backoff: int = 2
    callback_networks: str = "private"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read SVDQ_* from `env` (default: os.environ); raise ConfigError on a bad value."""
        env = os.environ if env is None else env
        get = lambda name: env.get(name) or VARIABLES[name][0]  # noqa: E731

        settings = cls(
            redis_url=_redis_url(get("SVDQ_REDIS_URL")),
            store=_choice("SVDQ_STORE", get("SVDQ_STORE"), ("s3", "local")),
            s3_endpoint=get("SVDQ_S3_ENDPOINT") or None,
            s3_bucket=get("SVDQ_S3_BUCKET"),
            s3_region=get("SVDQ_S3_REGION"),
            local_dir=Path(get("SVDQ_LOCAL_DIR")).expanduser().resolve(),
            model_dir=Path(get("SVDQ_MODEL_DIR")).expanduser(),
            default_variant=_choice("SVDQ_DEFAULT_VARIANT", get("SVDQ_DEFAULT_VARIANT"), VARIANTS),
            allow_cpu=_bool("SVDQ_ALLOW_CPU", get("SVDQ_ALLOW_CPU")),
            allow_urls=_bool("SVDQ_ALLOW_URLS", get("SVDQ_ALLOW_URLS")),
            max_input_bytes=_int("SVDQ_MAX_INPUT_BYTES", get("SVDQ_MAX_INPUT_BYTES")),
            max_input_pixels=_int("SVDQ_MAX_INPUT_PIXELS", get("SVDQ_MAX_INPUT_PIXELS")),
            visibility_timeout=_int("SVDQ_VISIBILITY_TIMEOUT", get("SVDQ_VISIBILITY_TIMEOUT")),
            task_time_limit=_int("SVDQ_TASK_TIME_LIMIT", get("SVDQ_TASK_TIME_LIMIT")),
            result_expires=_int("SVDQ_RESULT_EXPIRES", get("SVDQ_RESULT_EXPIRES")),
            log_level=_choice(
                "SVDQ_LOG_LEVEL",
                get("SVDQ_LOG_LEVEL").upper(),
                ("DEBUG", "INFO", "WARNING", "ERROR"),
            ),
            metrics_port=_int("SVDQ_METRICS_PORT", get("SVDQ_METRICS_PORT")),
            lease_ttl=_int("SVDQ_LEASE_TTL", get("SVDQ_LEASE_TTL")),
            max_deliveries=_int("SVDQ_MAX_DELIVERIES", get("SVDQ_MAX_DELIVERIES")),
            retry_backoff=_int("SVDQ_RETRY_BACKOFF", get("SVDQ_RETRY_BACKOFF")),
            retry_backoff_max=_int("SVDQ_RETRY_BACKOFF_MAX", get("SVDQ_RETRY_BACKOFF_MAX")),
            restore_interval=_int("SVDQ_RESTORE_INTERVAL", get("SVDQ_RESTORE_INTERVAL")),
            url_timeout=_int("SVDQ_URL_TIMEOUT", get("SVDQ_URL_TIMEOUT")),
            callback_secret=env.get("SVDQ_CALLBACK_SECRET", ""),
            callback_retries=_int("SVDQ_CALLBACK_RETRIES", get("SVDQ_CALLBACK_RETRIES")),
            callback_backoff=_int("SVDQ_CALLBACK_BACKOFF", get("SVDQ_CALLBACK_BACKOFF")),
            callback_networks=_choice(
                "SVDQ_CALLBACK_NETWORKS", get("SVDQ_CALLBACK_NETWORKS"), CALLBACK_NETWORKS
            ),
        )
        if settings.task_time_limit >= settings.visibility_timeout:
            raise ConfigError(
                f"SVDQ_TASK_TIME_LIMIT={settings.task_time_limit} must be below "
                f"SVDQ_VISIBILITY_TIMEOUT={settings.visibility_timeout}, or Redis hands a job "
                "that is still running to a second worker"
            )
        return settings


def _redis_url(value: str) -> str:
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(
            f"SVDQ_REDIS_URL={_redact(value)!r} is not allowed: a redis://, rediss:// or "
            "unix:// URL, e.g. redis://:password@host:6379/0"
        )
    return value


def _redact(url: str) -> str:
    """The URL with any password replaced, for messages and logs."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


redact_url = _redact


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed: one of {', '.join(allowed)}")
    return value


def _bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={value!r} is not allowed: 1/0, true/false, yes/no or on/off")


def _int(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not allowed: a whole number") from None
    if number <= 0:
        raise ConfigError(f"{name}={value!r} is not allowed: a whole number above 0")
    return number


CALLBACK_NETWORKS = ("public", "private", "any")

# Read by the worker alone (worker.profiles), listed here so `svdq --help` shows them too.
# Unset means "what the card's profile table row says"; `svdq plan` shows the outcome.
PROFILE_VARIABLES: dict[str, tuple[str, str]] = {
    "SVDQ_PROFILE": ("", "start the worker's profile ladder at this row (svdq plan lists them)"),
    "SVDQ_DTYPE": ("", "override the top profile's dtype: float16 or float32"),
    "SVDQ_OFFLOAD": ("", "override the top profile's offload: none, model or sequential"),
    "SVDQ_FORWARD_CHUNKING": ("", "override the top profile's UNet forward chunking: 1/0"),
    "SVDQ_DECODE_CHUNK_SIZE": ("", "override the top profile's decode chunk: a number or 'all'"),
    "SVDQ_COMPILE": ("", "override the top profile's torch.compile of the UNet: 1/0"),
}


def describe_variables() -> str:
    """The SVDQ_* variables with defaults, for `svdq --help`."""
    width = max(map(len, {**VARIABLES, **PROFILE_VARIABLES}))

    def rows(table: dict[str, tuple[str, str]]) -> list[str]:
        return [
            f"  {name:<{width}}  {meaning} [default: {default or 'unset'}]"
            for name, (default, meaning) in table.items()
        ]

    return "\n".join(
        [*rows(VARIABLES), "", "worker memory profile overrides:", *rows(PROFILE_VARIABLES)]
    )
