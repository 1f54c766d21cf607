"""S3 and S3-compatible stores (AWS, MinIO, moto) through boto3."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

from svdq.shared.errors import ConfigError, SvdqError
from svdq.shared.storage.base import (
    SHA256_METADATA,
    ObjectInfo,
    ObjectNotFoundError,
    StorageUnavailable,
)

_MISSING = {"404", "NoSuchKey", "NotFound"}
_REFUSED = {"NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
# A conditional PUT (If-None-Match: *) found the key taken, or another conditional write to
# it under way: either way the object is (about to be) there.
_TAKEN = {"PreconditionFailed", "412", "ConditionalRequestConflict"}
# Servers without conditional writes: fall back to HEAD, then PUT.
_NO_CONDITIONAL = {"NotImplemented", "501"}


# Tries per S3 call, the first included (botocore's "total_max_attempts"; its "max_attempts"
# counts retries only: botocore/args.py, `retries['total_max_attempts'] = value + 1`).
ATTEMPTS = 3


def call_bound(timeout: float) -> float:
    """Seconds one S3 call can take at most against a store that accepts connections and never
    answers: each try waits `timeout` to connect and `timeout` for an answer, and botocore's
    standard mode waits between tries `rand(0, 1) * min(base_scale * 2 ** i, 20)` with a base
    scale of 1 at most (botocore/retries/standard.py, ExponentialBackoff.delay_amount)."""
    return ATTEMPTS * 2 * timeout + sum(min(2**i, 20) for i in range(ATTEMPTS - 1))


class S3Store:
    """One bucket. Credentials come from the standard AWS_* variables or the instance role.

    Every call is bounded (`call_bound`, SVDQ_S3_TIMEOUT): a store that accepts and never
    answers raises StorageUnavailable, retried on the job's transient budget, well before the
    job's time limit (botocore's defaults, 60 s a read and 5 tries, outlasted it)."""

    def __init__(
        self,
        bucket: str,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        timeout: float = 10,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.endpoint_url = endpoint_url
        # Default checksums break several S3-compatible servers; only send them when required.
        config = Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            signature_version="s3v4",
            retries={"total_max_attempts": ATTEMPTS, "mode": "standard"},
            connect_timeout=timeout,
            read_timeout=timeout,
            s3={"addressing_style": "path"} if endpoint_url else {},
        )
        self.client: Any = boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=config
        )
        self.client.meta.events.register_first("needs-retry.s3", _a_time_limit_is_no_fault)

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self._call("put_object", **self._put_args(key, data, content_type))

    def put_if_absent(self, key: str, data: bytes, content_type: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        args = self._put_args(key, data, content_type)
        try:
            # If-None-Match: * makes S3 refuse to overwrite: upload and existence check in one.
            self.client.put_object(**args, IfNoneMatch="*")
        except ClientError as exc:
            code = _code(exc)
            if code in _TAKEN:
                return True
            if code not in _NO_CONDITIONAL:
                raise self._error("put_object", exc, args) from exc
        except BotoCoreError as exc:
            raise self._error("put_object", exc, args) from exc
        else:
            return False
        if self.exists(key):
            return True
        self.put_bytes(key, data, content_type)
        return False

    def get_bytes(self, key: str) -> bytes:
        response = self._call("get_object", Bucket=self.bucket, Key=key)
        return bytes(response["Body"].read())

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def head(self, key: str) -> ObjectInfo | None:
        try:
            response = self._call("head_object", Bucket=self.bucket, Key=key)
        except ObjectNotFoundError:
            return None
        sha = response.get("Metadata", {}).get(SHA256_METADATA)
        return ObjectInfo(key, int(response["ContentLength"]), sha)

    def delete(self, key: str) -> None:
        self._call("delete_object", Bucket=self.bucket, Key=key)  # absent keys are no error

    def list_prefix(self, prefix: str) -> Iterator[str]:
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            page = self._call("list_objects_v2", **args)  # up to 1 000 keys a request
            for obj in page.get("Contents", ()):
                yield str(obj["Key"])
            if not page.get("IsTruncated"):
                return
            args["ContinuationToken"] = page["NextContinuationToken"]

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def key_from_uri(self, uri: str) -> str | None:
        prefix = f"s3://{self.bucket}/"
        return uri[len(prefix) :] if uri.startswith(prefix) and len(uri) > len(prefix) else None

    def presign(self, key: str, seconds: int) -> str:
        return str(
            self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=seconds
            )
        )

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (demo, tests, first start against MinIO)."""
        try:
            self._call("head_bucket", Bucket=self.bucket)
        except ObjectNotFoundError:
            self._call("create_bucket", Bucket=self.bucket)

    def _put_args(self, key: str, data: bytes, content_type: str) -> dict[str, Any]:
        # The sha256 goes along as metadata, so `head` can answer it without a read.
        metadata = {SHA256_METADATA: hashlib.sha256(data).hexdigest()}
        return {
            "Bucket": self.bucket,
            "Key": key,
            "Body": data,
            "ContentType": content_type,
            "Metadata": metadata,
        }

    def _call(self, op: str, **kwargs: Any) -> Any:
        """One boto3 call, its failures mapped onto svdq's errors (see `_error`)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, op)(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(op, exc, kwargs) from exc

    def _error(self, op: str, exc: Exception, kwargs: dict[str, Any]) -> SvdqError:
        """A missing key or bucket: ObjectNotFoundError; a refusal that settings can fix
        (bucket, credentials): ConfigError; anything else may pass: StorageUnavailable."""
        from botocore.exceptions import ClientError

        if not isinstance(exc, ClientError):
            where = self.endpoint_url or "AWS"
            return StorageUnavailable(f"S3 {op} failed reaching {where}: {exc}")
        code = _code(exc)
        if code in _MISSING or (code == "NoSuchBucket" and op == "head_bucket"):
            return ObjectNotFoundError(f"{kwargs.get('Key', self.bucket)} not found")
        if code in _REFUSED:
            return ConfigError(
                f"S3 refused {op} on bucket {self.bucket!r} at "
                f"{self.endpoint_url or 'AWS'}: {code}. Check SVDQ_S3_BUCKET, "
                "SVDQ_S3_ENDPOINT and the AWS_* credentials"
            )
        return StorageUnavailable(f"S3 {op} failed: {code or exc}")


def _a_time_limit_is_no_fault(caught_exception: Any = None, **_: Any) -> None:
    """botocore's needs-retry hook: a job's soft time limit is raised as itself, not retried.

    Celery's pool raises SoftTimeLimitExceeded from a signal handler wherever the pool child
    is (billiard/pool.py, soft_timeout_sighandler), and botocore wraps any exception raised
    while urllib3 sends (botocore/httpsession.py: `except Exception as e: ... raise
    HTTPClientError(error=e)`), which its standard mode retries as a network fault: the job
    would go on waiting on the store past its soft limit, into the hard one."""
    from billiard.exceptions import SoftTimeLimitExceeded

    inner = getattr(caught_exception, "kwargs", {}).get("error")
    if isinstance(inner, SoftTimeLimitExceeded):
        raise inner


def _code(exc: Any) -> str:
    """The error code S3 answered with ('NoSuchKey', '412', ...)."""
    return str(exc.response.get("Error", {}).get("Code", ""))
