"""Object-store steps bulk submission needs beyond the ObjectStore interface: a conditional
upload (one request instead of HEAD + PUT) and forgetting a result for `--force`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from svdq.shared.errors import TransientError


def put_if_absent(store: Any, key: str, data: bytes, content_type: str) -> bool:
    """Upload unless `key` exists; return whether it existed. One request on S3."""
    client = getattr(store, "client", None)
    if client is None or not hasattr(store, "bucket"):
        if store.exists(key):
            return True
        store.put_bytes(key, data, content_type)
        return False
    from botocore.exceptions import ClientError

    try:
        # If-None-Match: * makes S3 refuse to overwrite: upload and existence check in one.
        client.put_object(
            Bucket=store.bucket, Key=key, Body=data, ContentType=content_type, IfNoneMatch="*"
        )
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
            return True
        if code in ("NotImplemented", "501"):  # servers without conditional writes
            if store.exists(key):
                return True
            store.put_bytes(key, data, content_type)
            return False
        raise TransientError(f"S3 put_object of {key} failed: {code or exc}") from exc
    return False


def forget_result(store: Any, key: str) -> None:
    """Delete a job's result.json so the worker generates it again (`--force`).

    result.json is the commit marker: while it exists every worker returns the recorded
    result instead of running the job. The old clips stay until the new ones replace them.
    """
    client = getattr(store, "client", None)
    if client is not None and hasattr(store, "bucket"):
        client.delete_object(Bucket=store.bucket, Key=key)  # S3: absent keys are no error
        return
    root = getattr(store, "root", None)
    if root is not None:
        Path(root, key).unlink(missing_ok=True)
