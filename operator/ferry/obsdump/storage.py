"""Writing dump objects to an S3-compatible store: single PUT for small batches, multipart for large ones,
with memory bounded by one part (and a compressor's state) per open object, and, for parts and objects
being sent by an UploadPool's threads, by the pool's byte budget."""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

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
    # Imported here, where a client is made (in a worker): the operator imports this module with the kinds'
    # plug-ins and never makes a client, and boto3 with botocore's configuration is 23 MB of its memory.
    import boto3
    from botocore.config import Config

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

    def open(self, key: str, pool: UploadPool | None = None) -> ObjectUpload:
        """A new object: raw and jsonl ones compressed whole as the target says, Parquet ones inside (by the writer);
        its parts sent by `pool`'s threads, or by the caller's without one."""
        if self.target.object_format is ObjectFormat.PARQUET:
            return ObjectUpload(self, key, None, PARQUET_CONTENT_TYPE, pool)
        compression = self.target.compression
        return ObjectUpload(self, key, compressor(compression), CONTENT_TYPES.get(compression), pool)

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


class UploadPool:
    """A few threads that send parts and complete objects while the worker's thread goes on consuming.

    What they hold is counted: the bytes of every part handed to them until it is sent, and the last bytes of
    every closed object until it is complete (`hold`). The worker stops taking records while that count is over
    `budget_bytes` (`over_budget`, `wait`), so memory is bounded by the budget plus one part buffer per open
    object. A job's failure stays in its future, for the worker's thread to handle as it handled the same error
    raised by a call it made itself; `stuck` names the oldest job running, so that a store that answers nothing
    is reported while the worker's thread is free."""

    def __init__(self, threads: int, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.executor = ThreadPoolExecutor(max(1, threads), thread_name_prefix="ferry-upload")
        self._cond = threading.Condition()
        self.in_flight = 0  # bytes handed over or held, not yet sent
        self.sending = 0  # of which parts and objects handed over (the rest is held: it waits for the worker)
        self.peak = 0  # the most in_flight ever was
        self._running: dict[int, tuple[float, str]] = {}  # job id: (started, what it does)
        self._ids = itertools.count()

    def submit(self, nbytes: int, doing: str, job: Callable[[], Any]) -> Future[Any]:
        """Run `job` on a pool thread; its `nbytes` count as in flight from now until it ends."""
        with self._cond:
            self.sending += nbytes
        self.hold(nbytes)
        ident = next(self._ids)

        def run() -> Any:
            with self._cond:
                self._running[ident] = (time.monotonic(), doing)
            try:
                return job()
            finally:
                with self._cond:
                    self._running.pop(ident, None)
                    self.sending -= nbytes
                self.hold(-nbytes)

        return self.executor.submit(run)

    def hold(self, nbytes: int) -> None:
        """Count (or, negative, stop counting) bytes kept for a job to come."""
        with self._cond:
            self.in_flight += nbytes
            self.peak = max(self.peak, self.in_flight)
            self._cond.notify_all()

    def over_budget(self) -> bool:
        return self.in_flight > self.budget_bytes

    def wait_for_parts(self) -> None:
        """Until the bytes held are within the budget, or none of them is being sent (what is left waits for the
        worker's thread, which this one is)."""
        with self._cond:
            while self.in_flight > self.budget_bytes and self.sending > 0:
                self._cond.wait()

    def wait(self, timeout: float) -> None:
        """Until a job ends or some bytes are let go, `timeout` at most."""
        with self._cond:
            self._cond.wait(timeout)

    def stuck(self, longer_than: float) -> tuple[float, str] | None:
        """The oldest job running, as (seconds, what it does), once it has run longer than `longer_than`."""
        with self._cond:
            running = list(self._running.values())
        if not running:
            return None
        started, doing = min(running)
        seconds = time.monotonic() - started
        return (seconds, doing) if seconds > longer_than else None

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class ObjectUpload:
    """One object being written: bytes are buffered (compressed, if the target says so) until a part is full,
    then sent as a multipart part: by the worker's thread, or by an UploadPool's while it goes on.

    With a pool, parts go out in any order (numbered when handed over), the multipart upload is created by the
    first that runs, and `complete` (the last part, then CompleteMultipartUpload, or one PUT for a small object)
    is for the caller to run once every part is sent (`parts_failure`, `parts_pending`)."""

    def __init__(
        self,
        store: ObjectStore,
        key: str,
        compressor: Compressor | None = None,
        content_type: str | None = None,
        pool: UploadPool | None = None,
    ) -> None:
        self.store = store
        self.key = key
        self.compressor = compressor
        self.headers = {"ContentType": content_type} if content_type else {}
        self.pool = pool
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []
        self.size = 0  # bytes as stored, after compression
        self.numbered = 0  # parts handed over so far
        self.pending: list[Future[Any]] = []  # parts handed to the pool
        self.held = 0  # bytes of the closed object counted in the pool until it is complete
        self.aborted = False
        self._lock = threading.Lock()  # the multipart upload's creation, parts and abort

    def write(self, data: bytes) -> None:
        if self.compressor is not None:
            data = self.compressor.compress(data)
        self.buffer += data
        self.size += len(data)
        part = self.store.part_bytes
        while len(self.buffer) >= part:  # one write (a run of records) may fill more than one part
            self._send_part(part)

    def _send_part(self, size: int) -> None:
        """Send the first `size` bytes of the buffer as the next part: every part but the last is part_bytes."""
        self.numbered += 1
        number = self.numbered
        if len(self.buffer) == size:  # handed over as it is, not copied: a new buffer takes its place
            body, self.buffer = self.buffer, bytearray()
        else:
            body, self.buffer = self.buffer[:size], self.buffer[size:]
        if self.pool is None:
            self._upload_part(number, body)
            return
        self.pending.append(
            self.pool.submit(len(body), f"uploading a part of {self.key}", lambda: self._upload_part(number, body))
        )

    def _upload_part(self, number: int, body: bytes | bytearray) -> None:
        client, bucket = self.store.client, self.store.target.bucket
        try:
            with self._lock:
                if self.aborted:
                    return
                if self.upload_id is None:
                    created = client.create_multipart_upload(Bucket=bucket, Key=self.key, **self.headers)
                    self.upload_id = created["UploadId"]
                upload_id = self.upload_id
            response = client.upload_part(Bucket=bucket, Key=self.key, UploadId=upload_id, PartNumber=number, Body=body)
        except (BotoCoreError, ClientError) as err:
            raise describe_store_error(err, self.store.target) from None
        with self._lock:
            self.parts.append({"PartNumber": number, "ETag": response["ETag"]})

    def parts_failure(self) -> BaseException | None:
        """The error of the first part the pool failed to send, if one did."""
        for future in self.pending:
            if future.done() and not future.cancelled() and future.exception() is not None:
                return future.exception()
        return None

    def parts_pending(self) -> bool:
        return any(not future.done() for future in self.pending)

    def close(self) -> None:
        """No more records: the compressor's last bytes join the buffer, which `complete` sends."""
        if self.compressor is not None:
            tail = self.compressor.flush()
            self.buffer += tail
            self.size += len(tail)
            self.compressor = None
        if self.pool is not None:
            self.held = len(self.buffer)
            self.pool.hold(self.held)

    def complete(self) -> None:
        """Make the object visible (every part handed over must be sent); raises on failure, the upload aborted."""
        client, bucket = self.store.client, self.store.target.bucket
        try:
            if self.numbered == 0:
                client.put_object(Bucket=bucket, Key=self.key, Body=self.buffer, **self.headers)
            else:
                if self.buffer:  # the last part, sent by this thread (a pool's thread does not wait on the pool)
                    self.numbered += 1
                    self._upload_part(self.numbered, self.buffer)
                parts = sorted(self.parts, key=lambda part: int(part["PartNumber"]))
                client.complete_multipart_upload(
                    Bucket=bucket, Key=self.key, UploadId=self.upload_id, MultipartUpload={"Parts": parts}
                )
        except (BotoCoreError, ClientError) as err:
            self.abort()
            raise describe_store_error(err, self.store.target) from None
        except TaskError:
            self.abort()
            raise
        finally:
            self._let_go()
        self.buffer = bytearray()

    def _let_go(self) -> None:
        with self._lock:
            held, self.held = self.held, 0
        if self.pool is not None and held:
            self.pool.hold(-held)

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            upload_id, self.upload_id = self.upload_id, None
        self._let_go()
        if upload_id is None:
            return
        try:
            self.store.client.abort_multipart_upload(Bucket=self.store.target.bucket, Key=self.key, UploadId=upload_id)
        except (BotoCoreError, ClientError) as err:
            log.info("abort of multipart upload for %s failed: %s", self.key, type(err).__name__)
