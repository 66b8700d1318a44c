"""The ObsDumpTask worker's upload pool against a real Apache Kafka and a real SeaweedFS store: parts are sent
while the worker goes on consuming, within the byte budget; a part's failure in the pool is handled as it was
when the worker's own thread sent it; an offset is committed only once the object before it is complete."""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError
from confluent_kafka import Producer
from ferry.obsdump.records import parse_object_key
from ferry.obsdump.storage import ObjectUpload

from tests.conftest import BucketFactory, TopicFactory
from tests.support.dumps import dumped_records, list_objects, produce, spec_for, start_pipeline, wait_for
from tests.support.kafka import KafkaCluster
from tests.support.servers import ObjectStore as SeaweedFS
from tests.test_obsdump_worker import committed

PART = 5 * 1024 * 1024  # S3's smallest part, and so the smallest part_bytes


def produce_large(bootstrap: str, topic: str, count: int) -> bytes:
    """`count` records of the same 12 KB value (hex, so no codec shrinks it) into partition 0."""
    value = os.urandom(6000).hex().encode()
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(count):
        producer.produce(topic, value=value, partition=0)
        if i % 500 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0
    return value


def test_the_byte_budget_bounds_the_parts_in_flight_while_consuming_goes_on(
    kafka: KafkaCluster,
    object_store: SeaweedFS,
    topic_factory: TopicFactory,
    bucket_factory: BucketFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topic, bucket = topic_factory(partitions=1), bucket_factory()
    spec = spec_for(kafka, object_store, bucket, topics=[topic], dumpPeriodSeconds=3600)
    group = f"g-{uuid.uuid4().hex[:8]}"
    budget = 2 * PART  # two parts in flight: the third waits (with 3 threads, the budget is what binds)
    running = start_pipeline(spec, object_store, group, part_bytes=PART, upload_threads=3, upload_budget_bytes=budget)
    pipeline = running.pipeline
    seen: list[tuple[str, int, int, int]] = []  # thread, bytes in flight, records read before and after the part
    send = ObjectUpload._upload_part

    def read() -> int:
        state = pipeline.partitions.get((topic, 0))
        batch = state.batch if state is not None else None
        return batch.records if batch is not None else 0

    def slow(upload: ObjectUpload, number: int, body: bytes | bytearray) -> None:
        before, in_flight = read(), pipeline.uploads.in_flight
        time.sleep(0.5)  # a slow store: without the budget, every part read meanwhile would be in flight
        seen.append((threading.current_thread().name, in_flight, before, read()))
        send(upload, number, body)

    monkeypatch.setattr(ObjectUpload, "_upload_part", slow)
    try:
        value = produce_large(kafka.bootstrap, topic, 2400)  # ~29 MB: 5 full parts and a last one
        wait_for(lambda: len(seen) >= 5, timeout=60, what="five parts sent")
    finally:
        running.finish()
    [data] = list_objects(object_store.client(), bucket).values()
    assert data == (value + b"\n") * 2400
    assert committed(kafka.bootstrap, group, topic, 1) == [2400]
    assert all(name.startswith("ferry-upload") for name, *_ in seen), seen
    # In flight: the budget, and the one part that went over it (the worker then waits for the pool); without
    # the budget, the five parts read during the first one's half second would all be.
    slack = 16 * 1024  # a part is full once a record takes it past part_bytes
    assert pipeline.uploads.peak <= budget + PART + slack, (pipeline.uploads.peak, seen)
    assert max(in_flight for _, in_flight, *_ in seen) <= budget + PART + slack
    # Records were read while a part was being sent: consuming and uploading overlap.
    assert any(after > before for _, _, before, after in seen), seen


def test_a_part_that_fails_in_the_pool_is_reported_and_redone_as_when_sent_in_line(
    kafka: KafkaCluster, object_store: SeaweedFS, topic_factory: TopicFactory, bucket_factory: BucketFactory
) -> None:
    topic, bucket = topic_factory(partitions=1), bucket_factory()
    spec = spec_for(kafka, object_store, bucket, topics=[topic], dumpPeriodSeconds=3600, maxRecordsPerObject=1000)
    group = f"g-{uuid.uuid4().hex[:8]}"
    running = start_pipeline(spec, object_store, group, part_bytes=PART)
    client = running.pipeline.store.client
    upload_part = client.upload_part
    failed_in: list[str] = []

    def refused(**kwargs: Any) -> Any:
        if len(failed_in) < 2:  # the store refuses the first two parts: botocore's error, as a refused connection
            failed_in.append(threading.current_thread().name)
            raise EndpointConnectionError(endpoint_url=object_store.endpoint)
        return upload_part(**kwargs)

    client.upload_part = refused
    recorder = running.recorder
    try:
        value = produce_large(kafka.bootstrap, topic, 1000)  # ~12 MB: two full parts and a last one
        failure = wait_for(
            lambda: next((p.error for p in list(recorder.reports) if p.error is not None), None),
            timeout=30,
            what="the failed part reported",
        )
        # What the synchronous upload reported for the same error: reason, message, store side.
        assert failure.reason == "ObjectStoreUnreachable" and object_store.endpoint in failure.message
        wait_for(lambda: len(failed_in) == 2, timeout=30, what="two refusals")
        # Redone from its first record after each refusal, the batch closes at its 1000th record: written and
        # committed with the worker still running.
        wait_for(lambda: committed(kafka.bootstrap, group, topic, 1) == [1000], timeout=60, what="the object written")
    finally:
        running.finish()
    assert all(name.startswith("ferry-upload") for name in failed_in), failed_in
    [(key, data)] = list_objects(object_store.client(), bucket).items()
    assert key.endswith(f"{topic}+0+0000000000000000000.bin")
    assert data == (value + b"\n") * 1000  # every record once: the failed batch was read again, not continued
    assert committed(kafka.bootstrap, group, topic, 1) == [1000]
    assert recorder.last.error is None and not client.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_offsets_are_committed_only_after_their_object_is_complete_and_in_order(
    kafka: KafkaCluster, object_store: SeaweedFS, topic_factory: TopicFactory, bucket_factory: BucketFactory
) -> None:
    topic, bucket = topic_factory(partitions=2), bucket_factory()
    produce(kafka.bootstrap, topic, 400, partitions=2)  # 200 per partition: five objects of 40 each
    spec = spec_for(
        kafka,
        object_store,
        bucket,
        topics=[topic],
        dumpPeriodSeconds=3600,
        maxRecordsPerObject=40,
        target={"storeKeys": True},
    )
    group = f"g-{uuid.uuid4().hex[:8]}"
    running = start_pipeline(spec, object_store, group)
    pipeline = running.pipeline
    client = pipeline.store.client
    put_object = client.put_object
    lock = threading.Lock()
    completed: dict[str, tuple[float, float, str]] = {}  # key: started, done, thread
    commits: list[tuple[int, int, float]] = []  # partition, offset, time

    def slow_put(**kwargs: Any) -> Any:
        started = time.monotonic()
        time.sleep(0.3)  # a slow store: a commit made before the object is complete would show
        result = put_object(**kwargs)
        with lock:
            completed[kwargs["Key"]] = (started, time.monotonic(), threading.current_thread().name)
        return result

    commit = pipeline._commit

    def recorded_commit(topic_: str, partition: int, offset: int) -> None:
        at = time.monotonic()
        commit(topic_, partition, offset)
        commits.append((partition, offset, at))

    client.put_object = slow_put
    pipeline._commit = recorded_commit  # type: ignore[method-assign]
    try:
        wait_for(lambda: committed(kafka.bootstrap, group, topic, 2) == [200, 200], timeout=60, what="all committed")
    finally:
        running.finish()
    records = dumped_records(object_store.client(), bucket)
    assert [[r.offset for r in records[(topic, p)]] for p in (0, 1)] == [list(range(200))] * 2
    ends: dict[tuple[int, int], str] = {}  # (partition, offset after the object): its key
    for key in list_objects(object_store.client(), bucket):
        name = parse_object_key(key)
        ends[(name.partition, name.start_offset + 40)] = key
    assert len(ends) == 10 and all(thread.startswith("ferry-upload") for *_, thread in completed.values())
    for partition in (0, 1):
        offsets = [offset for p, offset, _ in commits if p == partition]
        assert offsets == sorted(offsets) and offsets[-1] == 200, offsets  # in offset order
    for partition, offset, at in commits:
        key = ends[(partition, offset)]  # each commit is the end of an object...
        assert completed[key][1] <= at, f"{partition}@{offset} committed before {key} was complete"  # ...complete
    # Objects of a partition become visible one after another, each after the one before it is committed.
    for partition in (0, 1):
        for offset in range(80, 201, 40):
            previous_commit = min(at for p, o, at in commits if p == partition and o == offset - 40)
            assert completed[ends[(partition, offset)]][0] >= previous_commit
