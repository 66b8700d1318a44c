"""Reading a dump from an S3-compatible store: list the objects under the dump's directory, stream one object's
bytes. Only reads: the keys need list and read permissions on the bucket, nothing else."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from ferry.credentials import Sensitive
from ferry.errors import TaskError
from ferry.obsdump.storage import ATTEMPTS
from ferry.obsdump.storage import s3_client as dump_s3_client
from ferry.obsrestore.model import ObsRestoreSource

ACCESS_KEY_ROLE = "SOURCE_ACCESS_KEY"
SECRET_KEY_ROLE = "SOURCE_SECRET_KEY"
READ_CHUNK = 1024 * 1024  # bytes read from an object at a time
_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "403"}


def s3_client(source: ObsRestoreSource, secrets: dict[str, Sensitive]) -> Any:
    """The dump store's client, as the dump's own workers make it, with the restore's keys."""
    return dump_s3_client(source, secrets, ACCESS_KEY_ROLE, SECRET_KEY_ROLE)


def unresponsive(source: ObsRestoreSource, doing: str, seconds: float | None = None) -> TaskError:
    waited = "" if seconds is None else f" for {seconds:.0f}s"
    return TaskError(
        "ObjectStoreUnresponsive",
        f"the object store at {source.endpoint} has not answered{waited} ({doing}): check the store's health and "
        "the network path to it; the restore continues from its resume point once it answers",
    )


def describe_store_error(err: Exception, source: ObsRestoreSource, key: str | None = None) -> TaskError:
    """A reason and an actionable message, in the restore's words (source.*); never the credentials."""
    where = f"bucket {source.bucket!r} at {source.endpoint}"
    if isinstance(err, (ReadTimeoutError, ConnectTimeoutError)):
        return unresponsive(source, f"{type(err).__name__}, {ATTEMPTS} attempts")
    if isinstance(err, EndpointConnectionError):
        return TaskError("ObjectStoreUnreachable", f"cannot connect to {source.endpoint}: check source.endpoint")
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchBucket",) or (code == "404" and key is None):
            return TaskError("BucketNotFound", f"{where} does not exist: check source.bucket and source.endpoint")
        if code in ("NoSuchKey", "404"):
            return TaskError(
                "ObjectStoreError",
                f"object {key} of {where} is gone (deleted since the restore listed the dump): put it back, or pause "
                "and resume the task to list the dump again (it continues from its resume point)",
            )
        if code in _AUTH_CODES:
            return TaskError(
                "ObjectStoreAuthFailed",
                f"{where} refused the credentials ({code}): check the access key and secret key in the Secret "
                "named by source.credentialsSecretRef, and that they may list and read the bucket",
            )
        return TaskError("ObjectStoreError", f"{where}: {code or type(err).__name__}")
    return TaskError("ObjectStoreError", f"{where}: {type(err).__name__}")


class DumpStore:
    """The dump's bucket, read-only."""

    def __init__(self, client: Any, source: ObsRestoreSource) -> None:
        self.client = client
        self.source = source

    @property
    def prefix(self) -> str:
        return f"{self.source.directory}/" if self.source.directory else ""

    def list(self) -> list[tuple[str, int]]:
        """Every key under the dump's directory, with its size."""
        found = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.source.bucket, Prefix=self.prefix)
            for page in pages:
                found += [(item["Key"], int(item.get("Size") or 0)) for item in page.get("Contents", [])]
        except (BotoCoreError, ClientError) as err:
            raise describe_store_error(err, self.source) from None
        return found

    def read(self, key: str) -> Iterator[bytes]:
        """The object's bytes, READ_CHUNK at a time, as the store sends them."""
        try:
            body = self.client.get_object(Bucket=self.source.bucket, Key=key)["Body"]
            try:
                yield from body.iter_chunks(READ_CHUNK)
            finally:
                body.close()
        except (BotoCoreError, ClientError) as err:
            raise describe_store_error(err, self.source, key) from None
