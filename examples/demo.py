"""`make demo`: a local Apache Kafka and object store (SeaweedFS), sample records, and the ObsDumpTask
example run with `ferry run`; then the objects it wrote are listed and one is shown."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.kafka import start_kafka  # noqa: E402
from tests.support.servers import start_seaweedfs  # noqa: E402

EXAMPLE = ROOT / "examples" / "obsdumptask.yaml"
RECORDS = 10_000


def main() -> None:
    docs = list(yaml.safe_load_all(EXAMPLE.read_text()))
    task = next(d for d in docs if d["kind"] == "ObsDumpTask")
    secret = next(d for d in docs if d["kind"] == "Secret")["stringData"]
    topic, bucket = task["spec"]["topics"][0], task["spec"]["target"]["bucket"]
    with (
        tempfile.TemporaryDirectory(prefix="ferry-demo-") as work,
        start_kafka(Path(work) / "kafka", "ferry-demo") as kafka,
        start_seaweedfs(Path(work) / "s3", secret["accessKey"], secret["secretKey"]) as store,
    ):
        print(f"Apache Kafka {kafka.version} at {kafka.bootstrap}, object store (SeaweedFS) at {store.endpoint}")
        s3 = store.client()
        s3.create_bucket(Bucket=bucket)
        produce_samples(kafka.bootstrap, topic)
        print("$ ferry run -f examples/obsdumptask.yaml --set ... --duration 15")
        command = [sys.executable, "-m", "ferry", "run", "-f", str(EXAMPLE), "--duration", "15"]
        for override in (
            f"spec.source.bootstrapServers={kafka.bootstrap}",
            f"spec.target.endpoint={store.endpoint}",
            "spec.dumpPeriodSeconds=5",
        ):
            command += ["--set", override]
        env = {**os.environ, "FERRY_REPORT_INTERVAL": "2"}
        subprocess.run(command, check=True, env=env)
        show_objects(s3, bucket)


def produce_samples(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result(15)
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(RECORDS):
        producer.produce(topic, key=f"customer-{i % 97}", value=f'{{"order": {i}, "amount": {i % 500}}}')
        if i % 1000 == 0:
            producer.poll(0)
    producer.flush(30)
    print(f"produced {RECORDS} records to {topic} (3 partitions)\n")


def show_objects(s3: Any, bucket: str) -> None:
    print(f"\nobjects in s3://{bucket}:")
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            keys.append(item["Key"])
            print(f"  {item['Key']}  {item['Size']} bytes")
    lines = s3.get_object(Bucket=bucket, Key=keys[0])["Body"].read().decode().splitlines()
    print(f"\n{keys[0]} holds {len(lines)} records; the first two:")
    print("\n".join("  " + line for line in lines[:2]))


if __name__ == "__main__":
    main()
