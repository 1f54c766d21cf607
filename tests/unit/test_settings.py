"""Settings from SVDQ_* variables: defaults, and a ConfigError naming each bad variable."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from svdq.shared.errors import ConfigError
from svdq.shared.redisurl import redact_url
from svdq.shared.settings import Settings, WorkerSettings
from svdq.shared.variables import (
    COMPILE_VARIABLES,
    DEFAULT_BATCH_DIR,
    DEFAULT_MODEL_DIR,
    PROFILE_VARIABLES,
    VARIABLES,
    WORKER_VARIABLES,
    describe_variables,
)


def bad(env: dict[str, str], *hints: str) -> str:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    msg = str(info.value)
    for hint in hints:
        assert hint in msg, f"{hint!r} not in {msg!r}"
    return msg


def test_defaults_from_an_empty_env() -> None:
    s = Settings.from_env({})
    assert s == Settings(
        redis_url="redis://127.0.0.1:6379/0",
        redis_master_name="svdq",
        redis_sentinel_password="",
        redis_sentinel_timeout=1.0,
        redis_min_replicas=0,
        redis_wait_timeout=2,
        store="s3",
        s3_endpoint=None,
        s3_bucket="svdq",
        s3_region="us-east-1",
        s3_timeout=10,
        local_dir=(Path.cwd() / "svdq-store").resolve(),
        batch_dir=Path(DEFAULT_BATCH_DIR),
        model_dir=Path(DEFAULT_MODEL_DIR),
        default_variant="auto",
        allow_cpu=False,
        allow_urls=False,
        max_input_bytes=20 * 1024 * 1024,
        max_input_pixels=40_000_000,
        visibility_timeout=7200,
        task_time_limit=3600,
        overlap=1,  # prefork, one job at a time, unless the operator opts in
        result_expires=604800,
        log_level="INFO",
        metrics_host="127.0.0.1",
        metrics_port=9810,
        lease_ttl=60,
        heartbeat_ttl=30,
        reap_interval=15,
        max_deliveries=3,
        dead_letter_max=10000,
        retry_backoff=2,
        retry_backoff_max=120,
        transient_budget=900,
        restore_interval=60,
        url_timeout=20,
        callback_secret="",
        callback_retries=8,
        callback_backoff=2,
        callback_timeout=10,
        callback_networks="private",
        api_host="127.0.0.1",  # TLS is the reverse proxy's job: loopback unless told
        api_port=8000,
        api_cors_origins=(),  # CORS off
        api_rate_limit=120,
        api_max_queued=1000,
        api_max_body_bytes=21 * 1024 * 1024,
        api_max_batch_bytes=256 * 1024 * 1024,
        api_presign_seconds=3600,
        api_callback_networks="public",  # an API caller's callback_url: public addresses only
        api_max_batch_lines=100_000,
        api_max_batches=4,
        api_batch_idle=30,
        api_max_connections=4096,
        worker=WorkerSettings(
            gpu_index=None,
            worker_variant="tiny",
            profile=None,
            dtype=None,
            offload=None,
            forward_chunking=None,
            decode_chunk_size=None,
            compile=None,
            warm_shapes=((1024, 576, None),),
        ),
    )


def test_empty_values_mean_the_default() -> None:
    everything = {**VARIABLES, **WORKER_VARIABLES, **PROFILE_VARIABLES, **COMPILE_VARIABLES}
    assert Settings.from_env({name: "" for name in everything}) == Settings.from_env({})


def test_os_environ_is_not_read_when_env_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVDQ_STORE", "ftp")
    assert Settings.from_env({}).store == "s3"


def test_every_variable_has_a_field() -> None:
    fields = {f.name for f in dataclasses.fields(Settings)} - {"worker"}
    assert {name.removeprefix("SVDQ_").lower() for name in VARIABLES} == fields
    worker_fields = {f.name for f in dataclasses.fields(WorkerSettings)}
    worker_names = {**WORKER_VARIABLES, **PROFILE_VARIABLES, **COMPILE_VARIABLES}
    assert {name.removeprefix("SVDQ_").lower() for name in worker_names} == worker_fields


def test_values_are_read() -> None:
    s = Settings.from_env(
        {
            "SVDQ_REDIS_URL": "rediss://:pw@redis.example:6380/2",
            "SVDQ_STORE": "local",
            "SVDQ_S3_ENDPOINT": "http://127.0.0.1:9000",
            "SVDQ_S3_BUCKET": "clips",
            "SVDQ_S3_REGION": "eu-west-1",
            "SVDQ_LOCAL_DIR": "/tmp/svdq-store",
            "SVDQ_MODEL_DIR": "/models",
            "SVDQ_DEFAULT_VARIANT": "tiny",
            "SVDQ_ALLOW_CPU": "yes",
            "SVDQ_ALLOW_URLS": "TRUE",
            "SVDQ_MAX_INPUT_BYTES": "1000",
            "SVDQ_MAX_INPUT_PIXELS": "2000",
            "SVDQ_VISIBILITY_TIMEOUT": "600",
            "SVDQ_TASK_TIME_LIMIT": "599",
            "SVDQ_RESULT_EXPIRES": "60",
            "SVDQ_LOG_LEVEL": "debug",
        }
    )
    assert s.redis_url == "rediss://:pw@redis.example:6380/2"
    assert s.store == "local"
    assert s.s3_endpoint == "http://127.0.0.1:9000"
    assert (s.s3_bucket, s.s3_region) == ("clips", "eu-west-1")
    assert s.local_dir == Path("/tmp/svdq-store").resolve()
    assert s.model_dir == Path("/models")
    assert s.default_variant == "tiny"
    assert (s.allow_cpu, s.allow_urls) == (True, True)
    assert (s.max_input_bytes, s.max_input_pixels) == (1000, 2000)
    assert (s.visibility_timeout, s.task_time_limit, s.result_expires) == (600, 599, 60)
    assert s.log_level == "DEBUG"


def test_settings_are_frozen() -> None:
    s = Settings.from_env({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.store = "local"  # type: ignore[misc]


@pytest.mark.parametrize("url", ["redis://h", "rediss://h:6380/1", "unix:///run/redis.sock"])
def test_redis_url_schemes_accepted(url: str) -> None:
    assert Settings.from_env({"SVDQ_REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize("url", ["http://host:6379", "host:6379", "amqp://x", "REDIS://h"])
def test_bad_redis_scheme(url: str) -> None:
    msg = bad({"SVDQ_REDIS_URL": url}, "SVDQ_REDIS_URL", repr(url), "redis://", "rediss://")
    assert msg.startswith(f"SVDQ_REDIS_URL={url!r} is not allowed")


def test_bad_redis_url_never_echoes_the_password() -> None:
    msg = bad({"SVDQ_REDIS_URL": "http://:s3cret@host:6379/0"}, "SVDQ_REDIS_URL")
    assert "s3cret" not in msg
    assert "http://:***@host:6379/0" in msg


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://user:s3cret@host", "redis://user:***@host"),
        ("rediss://u:p@ss:w0rd@host:6380", "rediss://u:***@host:6380"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("not a url", "not a url"),
        ("", ""),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "s3cret" not in redact_url(url)


@pytest.mark.parametrize("value", ["ftp", "S3", "gcs", "local "])
def test_bad_store(value: str) -> None:
    msg = bad({"SVDQ_STORE": value}, "SVDQ_STORE", repr(value), "s3, local")
    assert msg == f"SVDQ_STORE={value!r} is not allowed: one of s3, local"


@pytest.mark.parametrize("value", ["auto", "svd", "svd-xt", "svd-xt-1-1", "tiny"])
def test_default_variant_accepted(value: str) -> None:
    assert Settings.from_env({"SVDQ_DEFAULT_VARIANT": value}).default_variant == value


def test_bad_default_variant() -> None:
    bad(
        {"SVDQ_DEFAULT_VARIANT": "foo"},
        "SVDQ_DEFAULT_VARIANT='foo' is not allowed",
        "auto, svd, svd-xt, svd-xt-1-1, tiny",
    )


@pytest.mark.parametrize("name", ["SVDQ_ALLOW_CPU", "SVDQ_ALLOW_URLS"])
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", True),
        ("true", True),
        ("Yes", True),
        ("ON", True),
        (" 1 ", True),
        ("0", False),
        ("false", False),
        ("no", False),
        ("off", False),
    ],
)
def test_bools(name: str, value: str, expected: bool) -> None:
    s = Settings.from_env({name: value})
    assert getattr(s, name.removeprefix("SVDQ_").lower()) is expected


@pytest.mark.parametrize("name", ["SVDQ_ALLOW_CPU", "SVDQ_ALLOW_URLS"])
@pytest.mark.parametrize("value", ["maybe", "2", "y", "enabled"])
def test_bad_bools(name: str, value: str) -> None:
    bad({name: value}, f"{name}={value!r} is not allowed", "1/0", "true/false")


INTS = [
    "SVDQ_MAX_INPUT_BYTES",
    "SVDQ_MAX_INPUT_PIXELS",
    "SVDQ_VISIBILITY_TIMEOUT",
    "SVDQ_TASK_TIME_LIMIT",
    "SVDQ_RESULT_EXPIRES",
]


@pytest.mark.parametrize("name", INTS)
@pytest.mark.parametrize("value", ["abc", "1.5", "1e6", "ten"])
def test_non_numeric_ints(name: str, value: str) -> None:
    msg = bad({name: value})
    assert msg == f"{name}={value!r} is not allowed: a whole number"


@pytest.mark.parametrize("name", INTS)
@pytest.mark.parametrize("value", ["0", "-1"])
def test_ints_must_be_positive(name: str, value: str) -> None:
    msg = bad({name: value})
    assert msg == f"{name}={value!r} is not allowed: a whole number above 0"


def test_max_input_bytes_one_is_accepted() -> None:
    assert Settings.from_env({"SVDQ_MAX_INPUT_BYTES": "1"}).max_input_bytes == 1


@pytest.mark.parametrize(
    ("limit", "visibility"), [("7200", "7200"), ("7201", "7200"), ("100", "99")]
)
def test_time_limit_must_be_below_visibility_timeout(limit: str, visibility: str) -> None:
    msg = bad(
        {"SVDQ_TASK_TIME_LIMIT": limit, "SVDQ_VISIBILITY_TIMEOUT": visibility},
        f"SVDQ_TASK_TIME_LIMIT={limit}",
        f"SVDQ_VISIBILITY_TIMEOUT={visibility}",
        "must be below",
    )
    assert "second worker" in msg


def test_time_limit_just_below_visibility_timeout_ok() -> None:
    s = Settings.from_env({"SVDQ_TASK_TIME_LIMIT": "7199", "SVDQ_VISIBILITY_TIMEOUT": "7200"})
    assert (s.task_time_limit, s.visibility_timeout) == (7199, 7200)


def test_default_time_limit_against_a_short_visibility_timeout_fails() -> None:
    bad({"SVDQ_VISIBILITY_TIMEOUT": "3600"}, "SVDQ_TASK_TIME_LIMIT=3600")


@pytest.mark.parametrize("value", ["verbose", "TRACE", "0"])
def test_bad_log_level(value: str) -> None:
    bad({"SVDQ_LOG_LEVEL": value}, "SVDQ_LOG_LEVEL", "DEBUG, INFO, WARNING, ERROR")


def test_describe_variables_lists_every_variable_with_its_default() -> None:
    text = describe_variables()
    lines = [line for line in text.splitlines() if line.startswith("  ")]
    table = {**VARIABLES, **WORKER_VARIABLES, **PROFILE_VARIABLES, **COMPILE_VARIABLES}
    assert len(lines) == len(table)
    assert "worker memory profile overrides:" in text
    assert "compiled workers:" in text
    assert "set by svdq worker for each worker it starts:" in text
    for line, (name, (default, meaning)) in zip(lines, table.items(), strict=True):
        assert line.split()[0] == name
        assert meaning in line
        assert line.endswith(f"[default: {default or 'unset'}]")
    assert "[default: unset]" in text  # SVDQ_S3_ENDPOINT


def test_worker_settings_are_read() -> None:
    worker = Settings.from_env(
        {
            "SVDQ_GPU_INDEX": "0",
            "SVDQ_WORKER_VARIANT": "svd-xt",
            "SVDQ_PROFILE": " xt-16g ",
            "SVDQ_DTYPE": "float32",
            "SVDQ_OFFLOAD": "model",
            "SVDQ_FORWARD_CHUNKING": "yes",
            "SVDQ_DECODE_CHUNK_SIZE": "all",
            "SVDQ_COMPILE": "0",
        }
    ).worker
    assert (worker.gpu_index, worker.worker_variant, worker.profile) == (0, "svd-xt", "xt-16g")
    assert worker.profile_changes() == {
        "dtype": "float32",
        "offload": "model",
        "forward_chunking": True,
        "decode_chunk_size": None,  # all frames at once
        "compile": False,
    }
    assert Settings.from_env({"SVDQ_DECODE_CHUNK_SIZE": "4"}).worker.profile_changes() == {
        "decode_chunk_size": 4
    }


@pytest.mark.parametrize(
    ("name", "value", "allowed"),
    [
        ("SVDQ_GPU_INDEX", "-1", "a GPU index, a whole number from 0"),
        ("SVDQ_GPU_INDEX", "gpu0", "a GPU index, a whole number from 0"),
        ("SVDQ_WORKER_VARIANT", "auto", "one of svd, svd-xt, svd-xt-1-1, tiny"),
        ("SVDQ_DECODE_CHUNK_SIZE", "0", "a whole number above 0, or 'all'"),
        ("SVDQ_OFFLOAD", "disk", "one of none, model, sequential"),
    ],
)
def test_bad_worker_settings_name_the_variable(name: str, value: str, allowed: str) -> None:
    assert bad({name: value}) == f"{name}={value!r} is not allowed: {allowed}"


# --- SVDQ_WARM_SHAPES: what a compiled worker compiles at load (issue 9, defect 7) ----------


def warm(value: str) -> WorkerSettings:
    return Settings.from_env({"SVDQ_WARM_SHAPES": value}).worker


def test_warm_shapes_default_to_a_jobs_default_size_at_the_variants_frames() -> None:
    worker = Settings.from_env({}).worker
    assert worker.warm_shapes == ((1024, 576, None),)  # the JobSpec's width/height defaults
    assert worker.warm_shapes_for(25) == ((1024, 576, 25),)  # svd-xt
    assert worker.warm_shapes_for(14) == ((1024, 576, 14),)  # svd, tiny


def test_warm_shapes_are_read_in_order_without_repeats() -> None:
    worker = warm(" 1024x576, 768X768x14,1024x576 ,576x1024x25")
    assert worker.warm_shapes == ((1024, 576, None), (768, 768, 14), (576, 1024, 25))
    # A left-out frame count that comes to one listed: warmed once.
    assert warm("512x512,512x512x25").warm_shapes_for(25) == ((512, 512, 25),)
    assert warm("512x512,512x512x25").warm_shapes_for(14) == ((512, 512, 14), (512, 512, 25))


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        ("1024", "'1024' is not WIDTHxHEIGHT or WIDTHxHEIGHTxFRAMES"),
        ("1024x576x25x2", "is not WIDTHxHEIGHT"),
        ("1024x576,", "'' is not WIDTHxHEIGHT"),
        ("wide", "'wide' is not WIDTHxHEIGHT"),
        ("1024x-576", "is not WIDTHxHEIGHT"),
        # The JobSpec's own bounds (shared/fields.py): no shape a job cannot ask for.
        ("1000x576", "width=1000 is not allowed: an integer 64–2048, a multiple of 64"),
        ("1024x577", "height=577 is not allowed: an integer 64–2048, a multiple of 64"),
        ("4096x576", "width=4096 is out of range: an integer 64–2048"),
        ("1024x576x65", "num_frames=65 is out of range: an integer 2–64"),
        ("1024x576x1", "num_frames=1 is out of range: an integer 2–64"),
    ],
)
def test_bad_warm_shapes_name_the_variable_the_value_and_what_is_allowed(
    value: str, hint: str
) -> None:
    msg = bad({"SVDQ_WARM_SHAPES": value}, f"SVDQ_WARM_SHAPES={value!r} is not allowed", hint)
    if "WIDTHxHEIGHT or" in hint:
        assert "a comma-separated list of WIDTHxHEIGHT or WIDTHxHEIGHTxFRAMES" in msg


def test_api_cors_origins_are_checked() -> None:
    got = Settings.from_env({"SVDQ_API_CORS_ORIGINS": "https://a.example, http://b:8080/"})
    assert got.api_cors_origins == ("https://a.example", "http://b:8080")
    bad({"SVDQ_API_CORS_ORIGINS": "*"}, "SVDQ_API_CORS_ORIGINS", "'*'")
    bad({"SVDQ_API_HOST": "a b"}, "SVDQ_API_HOST=")


@pytest.mark.parametrize("value", ["0", "-1", "soon", "61"])
def test_a_bad_sentinel_timeout_is_refused(value):
    with pytest.raises(ConfigError, match=f"SVDQ_REDIS_SENTINEL_TIMEOUT='{value}'"):
        Settings.from_env({"SVDQ_REDIS_SENTINEL_TIMEOUT": value})


@pytest.mark.parametrize(
    "url",
    [
        "rediss://h:6380/0?ssl_cert_reqs=nnone",
        "rediss://h:6380/0?ssl_cert_reqs=CERT_REQUIRED",
        "rediss://h:6380/0?ssl_cert_reqs=",
        "sentinel://h1:26379/0?ssl_cert_reqs=maybe&ssl_ca_certs=/ca.pem;sentinel://h2:26379",
    ],
)
def test_unknown_ssl_cert_reqs_is_refused_naming_the_value_and_the_allowed(url: str) -> None:
    value = url.split("ssl_cert_reqs=", 1)[1].split("&", 1)[0].split(";", 1)[0]
    msg = bad({"SVDQ_REDIS_URL": url}, "ssl_cert_reqs", repr(value), "required, optional, none")
    assert "not allowed" in msg


@pytest.mark.parametrize("reqs", ["required", "optional", "none"])
def test_known_ssl_cert_reqs_are_accepted(reqs: str) -> None:
    url = f"rediss://h:6380/0?ssl_cert_reqs={reqs}"
    assert Settings.from_env({"SVDQ_REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize("value", ["0", "5", "two"])
def test_overlap_is_bounded(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"SVDQ_OVERLAP": value})
    assert "SVDQ_OVERLAP" in str(err.value) and value in str(err.value)


def test_overlap_two() -> None:
    assert Settings.from_env({"SVDQ_OVERLAP": "2"}).overlap == 2
