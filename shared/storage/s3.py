"""S3 and S3-compatible stores (AWS, MinIO, moto) through boto3."""

from __future__ import annotations

from typing import Any

from svdq.shared.errors import ConfigError, TransientError
from svdq.shared.storage.base import ObjectNotFoundError

_MISSING = {"404", "NoSuchKey", "NotFound"}


class S3Store:
    """One bucket. Credentials come from the standard AWS_* variables or the instance role."""

    def __init__(
        self, bucket: str, endpoint_url: str | None = None, region: str = "us-east-1"
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
            retries={"max_attempts": 5, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            s3={"addressing_style": "path"} if endpoint_url else {},
        )
        self.client: Any = boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=config
        )

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self._call("put_object", Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def get_bytes(self, key: str) -> bytes:
        response = self._call("get_object", Bucket=self.bucket, Key=key)
        return bytes(response["Body"].read())

    def exists(self, key: str) -> bool:
        try:
            self._call("head_object", Bucket=self.bucket, Key=key)
        except ObjectNotFoundError:
            return False
        return True

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

    def _call(self, op: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, op)(**kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING or (code == "NoSuchBucket" and op == "head_bucket"):
                raise ObjectNotFoundError(f"{kwargs.get('Key', self.bucket)} not found") from exc
            if code in (
                "NoSuchBucket",
                "AccessDenied",
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
            ):
                raise ConfigError(
                    f"S3 refused {op} on bucket {self.bucket!r} at "
                    f"{self.endpoint_url or 'AWS'}: {code}. Check SVDQ_S3_BUCKET, "
                    "SVDQ_S3_ENDPOINT and the AWS_* credentials"
                ) from exc
            raise TransientError(f"S3 {op} failed: {code or exc}") from exc
        except BotoCoreError as exc:
            raise TransientError(
                f"S3 {op} failed reaching {self.endpoint_url or 'AWS'}: {exc}"
            ) from exc
