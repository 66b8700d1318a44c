"""Writing dump objects to an S3-compatible store: single PUT for small batches, multipart for large ones,
with memory bounded by one part (and a compressor's state) per open object."""

from __future__ import annotations

import logging
import re
from typing import Any, Protocol

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from ferry.credentials import Sensitive
from ferry.errors import TaskError
from ferry.obsdump.compression import CONTENT_TYPES, Compressor, compressor
from ferry.obsdump.model import ObjectFormat, ObsDumpTarget
from ferry.obsdump.parquet import CONTENT_TYPE as PARQUET_CONTENT_TYPE

log = logging.getLogger(__name__)

MIN_PART_BYTES = 5 * 1024 * 1024  # S3's smallest allowed part (except the last)
ACCESS_KEY_ROLE = "TARGET_ACCESS_KEY"
SECRET_KEY_ROLE = "TARGET_SECRET_KEY"
# Every request has a deadline: a store that accepts connections and answers nothing costs at most
# ATTEMPTS x (CONNECT_TIMEOUT + READ_TIMEOUT) per call, and the worker's status names it meanwhile.
CONNECT_TIMEOUT = 5
READ_TIMEOUT = 20  # per socket read or write; a slow but moving upload does not hit it
ATTEMPTS = 3
_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "403"}
# What CreateBucket answers when the bucket appeared meanwhile (another worker of the task, or a person).
_BUCKET_EXISTS_CODES = {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}


class StoreEndpoint(Protocol):
    """Where an object store is: a dump's target, or a restore's source."""

    endpoint: str
    region: str
    path_style: bool


def s3_client(
    target: StoreEndpoint,
    secrets: dict[str, Sensitive],
    access_key_role: str = ACCESS_KEY_ROLE,
    secret_key_role: str = SECRET_KEY_ROLE,
) -> Any:
    """A boto3 client with deadlines on every request; the keys from `secrets` by their roles."""
    config = Config(
        s3={"addressing_style": "path" if target.path_style else "virtual"},
        retries={"mode": "standard", "max_attempts": ATTEMPTS},
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        # Many S3-compatible stores (OBS, older MinIO/Ceph) reject the default CRC32 trailers of new boto3.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.client(
        "s3",
        endpoint_url=target.endpoint,
        region_name=target.region,
        aws_access_key_id=secrets[access_key_role].reveal(),
        aws_secret_access_key=secrets[secret_key_role].reveal(),
        config=config,
    )


def unresponsive(target: ObsDumpTarget, doing: str, seconds: float | None = None) -> TaskError:
    """A store that takes connections and does not answer (or a network path that drops the answers)."""
    waited = "" if seconds is None else f" for {seconds:.0f}s"
    return TaskError(
        "ObjectStoreUnresponsive",
        f"the object store at {target.endpoint} has not answered{waited} ({doing}): check the store's "
        "health and the network path to it; the records wait in Kafka and are written once it answers",
    )


def _code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def describe_store_error(err: Exception, target: ObsDumpTarget) -> TaskError:
    """A reason and an actionable message; never the credentials."""
    where = f"bucket {target.bucket!r} at {target.endpoint}"
    if isinstance(err, (ReadTimeoutError, ConnectTimeoutError)):
        return unresponsive(target, f"{type(err).__name__}, {ATTEMPTS} attempts")
    if isinstance(err, EndpointConnectionError):
        return TaskError("ObjectStoreUnreachable", f"cannot connect to {target.endpoint}: check target.endpoint")
    if isinstance(err, ClientError):
        code = _code(err)
        if code in ("NoSuchBucket", "404"):
            return TaskError(
                "BucketNotFound",
                f"{where} does not exist: create it, fix target.bucket, or create the task again with "
                "target.createBucket: true",
            )
        if code in _AUTH_CODES:
            return TaskError(
                "ObjectStoreAuthFailed",
                f"{where} refused the credentials ({code}): check the access key and secret key in the "
                "Secret named by target.credentialsSecretRef and the key's permissions on the bucket",
            )
        return TaskError("ObjectStoreError", f"{where}: {code or type(err).__name__}")
    return TaskError("ObjectStoreError", f"{where}: {type(err).__name__}")


class ObjectStore:
    def __init__(self, client: Any, target: ObsDumpTarget, part_bytes: int = 8 * 1024 * 1024) -> None:
        self.client = client
        self.target = target
        self.part_bytes = max(part_bytes, MIN_PART_BYTES)

    def check(self, create: bool | None = None) -> None:
        """Fail early, with a reason, when the bucket is missing or the keys are wrong; with
        target.createBucket (unless `create` says otherwise), create a missing bucket."""
        try:
            self.client.list_objects_v2(Bucket=self.target.bucket, Prefix=self.target.directory, MaxKeys=1)
        except ClientError as err:
            if _code(err) == "AccessDenied":
                # Write-only keys are a sound policy: the first upload will tell if writing is denied too.
                log.warning("the keys may not list bucket %s; checking by writing instead", self.target.bucket)
                return
            if _code(err) == "NoSuchBucket" and (self.target.create_bucket if create is None else create):
                self._create_bucket()
                return
            raise describe_store_error(err, self.target) from None
        except BotoCoreError as err:
            raise describe_store_error(err, self.target) from None

    def _create_bucket(self) -> None:
        target = self.target
        # AWS refuses a LocationConstraint of us-east-1 (its default); other regions and OBS need one.
        region = {"LocationConstraint": target.region}
        where = {} if target.region == "us-east-1" else {"CreateBucketConfiguration": region}
        try:
            self.client.create_bucket(Bucket=target.bucket, **where)
        except ClientError as err:
            code = _code(err)
            if code in _BUCKET_EXISTS_CODES:
                log.info("bucket %s appeared while it was being created (%s): using it", target.bucket, code)
                self.check(create=False)
                return
            if code in _AUTH_CODES:
                raise TaskError(
                    "BucketCreationDenied",
                    f"bucket {target.bucket!r} does not exist at {target.endpoint} and the credentials may not "
                    f"create it ({code}): create the bucket, or allow the key in target.credentialsSecretRef to "
                    "create buckets",
                ) from None
            raise TaskError(
                "ObjectStoreError",
                f"creating bucket {target.bucket!r} at {target.endpoint} failed ({code or type(err).__name__}): "
                "check target.bucket and target.region",
            ) from None
        except BotoCoreError as err:
            raise describe_store_error(err, target) from None
        log.info("created bucket %s at %s (target.createBucket)", target.bucket, target.endpoint)

    def open(self, key: str) -> ObjectUpload:
        """A new object: raw and jsonl ones compressed whole as the target says, Parquet ones inside (by the writer)."""
        if self.target.object_format is ObjectFormat.PARQUET:
            return ObjectUpload(self, key, None, PARQUET_CONTENT_TYPE)
        compression = self.target.compression
        return ObjectUpload(self, key, compressor(compression), CONTENT_TYPES.get(compression))

    def abort_stale_uploads(self, key_pattern: str) -> int:
        """Abort unfinished multipart uploads a killed worker left for keys matching the pattern."""
        aborted = 0
        try:
            listing = self.client.list_multipart_uploads(Bucket=self.target.bucket, Prefix=self.target.directory)
            for upload in listing.get("Uploads", []):
                if re.search(key_pattern, upload["Key"]):
                    self.client.abort_multipart_upload(
                        Bucket=self.target.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    aborted += 1
        except (BotoCoreError, ClientError) as err:
            log.info("could not list or abort stale multipart uploads: %s", type(err).__name__)
        return aborted


class ObjectUpload:
    """One object being written: bytes are buffered (compressed, if the target says so) until a part is full,
    then sent as a multipart part."""

    def __init__(
        self, store: ObjectStore, key: str, compressor: Compressor | None = None, content_type: str | None = None
    ) -> None:
        self.store = store
        self.key = key
        self.compressor = compressor
        self.headers = {"ContentType": content_type} if content_type else {}
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []
        self.size = 0  # bytes as stored, after compression

    def write(self, data: bytes) -> None:
        if self.compressor is not None:
            data = self.compressor.compress(data)
        self.buffer += data
        self.size += len(data)
        if len(self.buffer) >= self.store.part_bytes:
            try:
                self._send_part()
            except (BotoCoreError, ClientError) as err:
                raise describe_store_error(err, self.store.target) from None

    def _send_part(self) -> None:
        client, bucket = self.store.client, self.store.target.bucket
        if self.upload_id is None:
            self.upload_id = client.create_multipart_upload(Bucket=bucket, Key=self.key, **self.headers)["UploadId"]
        number = len(self.parts) + 1
        response = client.upload_part(
            Bucket=bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=bytes(self.buffer)
        )
        self.parts.append({"PartNumber": number, "ETag": response["ETag"]})
        self.buffer.clear()

    def finish(self) -> None:
        """Make the object visible; raises on failure (the caller re-reads the batch from Kafka)."""
        client, bucket = self.store.client, self.store.target.bucket
        if self.compressor is not None:
            tail = self.compressor.flush()
            self.buffer += tail
            self.size += len(tail)
        try:
            if self.upload_id is None:
                client.put_object(Bucket=bucket, Key=self.key, Body=bytes(self.buffer), **self.headers)
            else:
                if self.buffer:
                    self._send_part()
                client.complete_multipart_upload(
                    Bucket=bucket,
                    Key=self.key,
                    UploadId=self.upload_id,
                    MultipartUpload={"Parts": self.parts},
                )
        except (BotoCoreError, ClientError) as err:
            self.abort()
            raise describe_store_error(err, self.store.target) from None
        self.buffer = bytearray()

    def abort(self) -> None:
        if self.upload_id is None:
            return
        try:
            self.store.client.abort_multipart_upload(
                Bucket=self.store.target.bucket, Key=self.key, UploadId=self.upload_id
            )
        except (BotoCoreError, ClientError) as err:
            log.info("abort of multipart upload for %s failed: %s", self.key, type(err).__name__)
        self.upload_id = None
