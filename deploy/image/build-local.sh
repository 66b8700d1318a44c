#!/usr/bin/env bash
# Build Ferry's image with no Docker engine, no container registry and no base image to pull, then
# smoke-test it. Needs root, a Debian mirror (the one in this machine's apt sources) and PyPI
# (pip's configured index, or PIP_INDEX_URL).
#
#   deploy/image/build-local.sh
#
# Steps: apt-get installs buildah, podman, runc and debootstrap if missing; containers.conf,
# storage.conf and registries.conf are written into a work directory that also holds the image
# store; a local Debian base with python3 is built with debootstrap (skipped when the work directory
# already has it); Ferry's Dockerfile is built with that base as BASE_IMAGE and tagged
# localhost/ferry:<version in pyproject.toml>; then the image is checked: `ferry --help` on a
# read-only root with no capabilities and no network, user 10001, no compilers or pip,
# `ferry crds` writing only to a /tmp tmpfs, its size, and (when this checkout's .venv has the test
# servers) `ferry run` of examples/obsdumptask.yaml against a local Apache Kafka and SeaweedFS.
#
# Environment (all optional):
#   FERRY_IMAGE_WORKDIR   work directory, kept afterwards (default: a new mktemp directory). Reuse it
#                         to skip the base image and reuse build layers.
#   FERRY_DEBIAN_MIRROR   Debian mirror for debootstrap (default: the one in this machine's apt sources)
#   FERRY_DEBIAN_SUITE    default bookworm
#   FERRY_HOST_CA         CA bundle pip trusts inside the build (default /etc/ssl/certs/ca-certificates.crt;
#                         mounted for the build only, never copied into the image)
#   PIP_INDEX_URL         passed to the build as a build arg
#   FERRY_REVISION        org.opencontainers.image.revision label (e.g. a commit id)
#   FERRY_IMAGE_E2E       auto (default): run the Kafka/SeaweedFS check when possible; 0: skip; 1: require it
#   FERRY_IMAGE_ARCHIVE   also save the image to this file (docker-archive, for `docker load` / `kind load`)
#   FERRY_STORAGE_DRIVER  overlay (default) or vfs
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SUITE=${FERRY_DEBIAN_SUITE:-bookworm}
HOST_CA=${FERRY_HOST_CA:-/etc/ssl/certs/ca-certificates.crt}
E2E=${FERRY_IMAGE_E2E:-auto}
DRIVER=${FERRY_STORAGE_DRIVER:-overlay}
BASE_IMAGE=localhost/ferry-python-base:$SUITE
LABEL=ferry-build-local=$$
T0=$(date +%s)
TIMINGS=()

say() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'build-local: %s\n' "$*" >&2; exit 1; }
timed() { TIMINGS+=("$(printf '%-34s %4ss' "$1" "$(($(date +%s) - $2))")"); }

[[ $(id -u) == 0 ]] || die "run as root: apt-get, debootstrap and the image store under the work directory need it"
[[ -f $ROOT/Dockerfile && -f $ROOT/pyproject.toml ]] || die "no Dockerfile/pyproject.toml in $ROOT"

# The version in pyproject.toml's [project] table.
VERSION=$(awk -F'"' '/^\[/ { p = ($0 == "[project]") } p && /^version *=/ { print $2; exit }' "$ROOT/pyproject.toml")
[[ -n $VERSION ]] || die "no [project] version in pyproject.toml"
IMAGE=localhost/ferry:$VERSION

# ---------------------------------------------------------------------------------------------
say "tools"
t=$(date +%s)
missing=()
for tool in buildah podman runc debootstrap; do
    command -v "$tool" > /dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    say "installing with apt-get: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
else
    echo "buildah, podman, runc and debootstrap are installed"
fi
buildah --version
podman --version
timed "tools" "$t"

# ---------------------------------------------------------------------------------------------
WORK=${FERRY_IMAGE_WORKDIR:-$(mktemp -d -t ferry-image.XXXXXX)}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
say "work directory $WORK"
mkdir -p "$WORK/storage" "$WORK/run" "$WORK/tmp"
# crun cannot run in this kind of hybrid-cgroup host: runc. Default rlimits podman cannot raise here
# are replaced by ones it can. No systemd: cgroupfs, and events in a file under the work directory.
cat > "$WORK/containers.conf" << EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$WORK/run/events.log"
tmp_dir = "$WORK/run/libpod"
EOF
cat > "$WORK/storage.conf" << EOF
[storage]
driver = "$DRIVER"
graphroot = "$WORK/storage"
runroot = "$WORK/run/storage"
EOF
# Never resolve short names against a registry: every image here is localhost/...
cat > "$WORK/registries.conf" << 'EOF'
unqualified-search-registries = []
EOF
export CONTAINERS_CONF=$WORK/containers.conf
export CONTAINERS_STORAGE_CONF=$WORK/storage.conf
export CONTAINERS_REGISTRIES_CONF=$WORK/registries.conf
export TMPDIR=$WORK/tmp

ROOTFS=$WORK/rootfs
cleanup() {
    local ids
    ids=$(podman ps -aq --filter "label=$LABEL" 2> /dev/null || true)
    if [[ -n $ids ]]; then
        # shellcheck disable=SC2086
        podman rm -f $ids > /dev/null 2>&1 || true
    fi
    if [[ -d $ROOTFS ]]; then
        # debootstrap unmounts what it mounted, unless it was killed
        awk -v r="$ROOTFS" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do
            umount -l "$m" || true
        done
        rm -rf "$ROOTFS"
    fi
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------
# The first deb822 stanza or one-line entry of this machine's apt sources serving the suite itself.
debian_mirror() {
    local files=()
    [[ -f /etc/apt/sources.list ]] && files+=(/etc/apt/sources.list)
    for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] && files+=("$f")
    done
    ((${#files[@]})) || return 0
    awk -v suite="$SUITE" '
        function flush() {
            if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && enabled != "no" && uri == "")
                uri = uris
            types = suites = uris = ""; enabled = "yes"
        }
        FNR == 1 { flush() }
        /^[[:space:]]*#/ { next }
        /^deb[[:space:]]/ {
            line = $0; sub(/\[[^]]*\]/, "", line); n = split(line, f, /[[:space:]]+/)
            if (f[3] == suite && uri == "") uri = f[2]
            next
        }
        /^[[:space:]]*$/ { flush(); next }
        tolower($1) == "types:"   { $1 = ""; types = $0 }
        tolower($1) == "suites:"  { $1 = ""; suites = $0 }
        tolower($1) == "uris:"    { uris = $2 }
        tolower($1) == "enabled:" { enabled = tolower($2) }
        END { flush(); print uri }
    ' "${files[@]}"
}

say "base image $BASE_IMAGE (Debian $SUITE, python3)"
t=$(date +%s)
if podman image exists "$BASE_IMAGE"; then
    echo "already in $WORK/storage: skipped"
else
    MIRROR=${FERRY_DEBIAN_MIRROR:-$(debian_mirror)}
    [[ -n $MIRROR ]] || die "no Debian mirror for $SUITE in the apt sources: set FERRY_DEBIAN_MIRROR"
    echo "debootstrap from $MIRROR"
    rm -rf "$ROOTFS"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$ROOTFS" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 \
        || { tail -n 30 "$WORK/debootstrap.log" >&2; die "debootstrap failed (log: $WORK/debootstrap.log)"; }
    # Nothing of this host, and no package caches, in the image.
    rm -f "$ROOTFS/etc/resolv.conf" "$ROOTFS/etc/hostname"
    rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/log/* \
        "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/*
    tar --numeric-owner -C "$ROOTFS" -c . | podman import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        - "$BASE_IMAGE" > /dev/null
    rm -rf "$ROOTFS"
fi
podman run --rm --label "$LABEL" --network none "$BASE_IMAGE" python3 --version
timed "base image" "$t"

# ---------------------------------------------------------------------------------------------
say "image $IMAGE"
t=$(date +%s)
build_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "VERSION=$VERSION")
[[ -n ${FERRY_REVISION:-} ]] && build_args+=(--build-arg "REVISION=$FERRY_REVISION")
[[ -n ${PIP_INDEX_URL:-} ]] && build_args+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")
if [[ -f $HOST_CA ]]; then
    # For the pip step only: a bind mount is not part of any layer.
    build_args+=(-v "$HOST_CA:/etc/ssl/host-ca.crt:ro" --build-arg PIP_CERT=/etc/ssl/host-ca.crt)
fi
buildah bud --pull=never --network host --layers "${build_args[@]}" \
    -f "$ROOT/Dockerfile" -t "$IMAGE" "$ROOT"
timed "image build" "$t"

# ---------------------------------------------------------------------------------------------
say "smoke checks"
t=$(date +%s)
# A read-only root, no capabilities, no network, and (unless --tmpfs says otherwise) nothing writable
# at all: podman would otherwise mount tmpfs on /tmp, /var/tmp and /run by itself.
locked=(podman run --rm --label "$LABEL" --read-only --read-only-tmpfs=false --cap-drop ALL
    --security-opt no-new-privileges --network none)

echo "-- (a) ferry --help, as the image's user, read-only root, no capabilities, no network"
s=$(date +%s%N)
"${locked[@]}" "$IMAGE" --help
echo "(ran in $((($(date +%s%N) - s) / 1000000)) ms, container start included)"

echo "-- (a2) every ferry module imports (no missing runtime dependency)"
"${locked[@]}" --entrypoint python3 "$IMAGE" -c '
import importlib, pkgutil, ferry
names = [m.name for m in pkgutil.walk_packages(ferry.__path__, "ferry.") if m.name != "ferry.__main__"]
for name in names:
    importlib.import_module(name)
print(f"{len(names)} modules imported")
' || die "a ferry module does not import"

echo "-- (b) user"
user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
uid=$("${locked[@]}" --entrypoint id "$IMAGE" -u)
gid=$("${locked[@]}" --entrypoint id "$IMAGE" -g)
echo "image user: $user; id -u: $uid; id -g: $gid"
[[ $uid == 10001 && $gid == 10001 && $user == 10001:10001 ]] || die "expected user 10001:10001"

echo "-- (c) no compilers, no pip or setuptools"
"${locked[@]}" --entrypoint sh "$IMAGE" -c '
    status=0
    for tool in gcc cc c++ g++ clang make ld as pip pip3 pip3.11 easy_install wheel; do
        if found=$(command -v "$tool"); then echo "FOUND on PATH: $found"; status=1; fi
    done
    for python in /opt/ferry/bin/python3 "$(readlink -f /opt/ferry/bin/python3)"; do
        if "$python" -I -c "import importlib.util as u, sys
sys.exit(0 if any(u.find_spec(m) for m in (\"pip\", \"setuptools\", \"wheel\", \"ensurepip\")) else 1)"; then
            echo "FOUND pip, setuptools, wheel or ensurepip importable by $python"; status=1
        fi
    done
    echo "PATH=$PATH"
    echo "/opt/ferry/bin: $(ls /opt/ferry/bin | tr "\n" " ")"
    [ "$status" = 0 ] && echo "none of gcc cc c++ g++ clang make ld as pip pip3 easy_install wheel; pip/setuptools/wheel/ensurepip not importable"
    exit "$status"
' || die "build tools found in the runtime image"

echo "-- (d) ferry crds --out /tmp/crds on a read-only root with a /tmp tmpfs; what it wrote"
"${locked[@]}" --tmpfs /tmp:rw,size=64m,mode=1777 --entrypoint sh "$IMAGE" -c '
    ferry crds --out /tmp/crds && echo "files now in /tmp:" && find /tmp -type f | sort
    extra=$(find /tmp -type f ! -path "/tmp/crds/*.yaml")
    [ -z "$extra" ] || { echo "unexpected files: $extra"; exit 1; }
' || die "ferry crds failed or wrote outside /tmp/crds"

echo "-- (e) size"
podman images --filter reference=localhost/ferry --filter reference=localhost/ferry-python-base \
    --format '{{.Repository}}:{{.Tag}}  {{.Size}}'
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
echo "$IMAGE: $((size / 1000000)) MB ($size bytes)"
podman image inspect --format '{{range $k, $v := .Labels}}{{$k}}={{$v}}{{"\n"}}{{end}}' "$IMAGE"
timed "smoke checks (a)-(e)" "$t"

# ---------------------------------------------------------------------------------------------
# ferry run in the container against Apache Kafka and SeaweedFS started on the host by the test
# support code (needs this checkout's .venv from `make test`/`make demo`).
say "end to end: ferry run -f examples/obsdumptask.yaml in the container"
t=$(date +%s)
PY=$ROOT/.venv/bin/python
if [[ $E2E == 0 ]]; then
    echo "skipped (FERRY_IMAGE_E2E=0)"
elif ! [[ -x $PY ]] || ! (cd "$ROOT" && "$PY" -c '
import pathlib, shutil, sys, sysconfig
import tests.support.kafka, tests.support.servers
sys.exit(not ((pathlib.Path(sysconfig.get_path("scripts")) / "weed").is_file() or shutil.which("weed")))
' 2> /dev/null); then
    [[ $E2E == 1 ]] && die "FERRY_IMAGE_E2E=1 but $PY cannot import tests.support.servers (run make test first)"
    echo "skipped: no .venv with the test servers (make test creates it)"
else
    (cd "$ROOT" && FERRY_E2E_IMAGE=$IMAGE FERRY_E2E_LABEL=$LABEL FERRY_E2E_WORK=$WORK "$PY" - << 'PYEOF')
"""Produce records to a host Apache Kafka, run `ferry run` in the image on the host network, list objects."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from tests.support.kafka import start_kafka
from tests.support.servers import start_seaweedfs

EXAMPLE = Path("examples/obsdumptask.yaml").resolve()
RECORDS = 3000
docs = list(yaml.safe_load_all(EXAMPLE.read_text()))
task = next(d for d in docs if d["kind"] == "ObsDumpTask")
secret = next(d for d in docs if d["kind"] == "Secret")["stringData"]
topic, bucket = task["spec"]["topics"][0], task["spec"]["target"]["bucket"]

with (
    tempfile.TemporaryDirectory(prefix="e2e-", dir=os.environ["FERRY_E2E_WORK"]) as work,
    start_kafka(Path(work) / "kafka", "ferry-image") as kafka,
    start_seaweedfs(Path(work) / "s3", secret["accessKey"], secret["secretKey"]) as store,
):
    print(f"Apache Kafka at {kafka.bootstrap}, SeaweedFS at {store.endpoint}", flush=True)
    s3 = store.client()
    s3.create_bucket(Bucket=bucket)
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})  # kept alive until the topic exists
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result(15)
    producer = Producer({"bootstrap.servers": kafka.bootstrap})
    for i in range(RECORDS):
        producer.produce(topic, key=f"customer-{i % 97}", value=f'{{"order": {i}}}')
    assert producer.flush(30) == 0
    del admin, producer  # closed now, not after the broker has stopped
    command = [
        "podman", "run", "--rm", "--label", os.environ["FERRY_E2E_LABEL"],
        "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,size=64m,mode=1777",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--network", "host",
        "-v", f"{EXAMPLE}:/etc/ferry/obsdumptask.yaml:ro",
        "-e", "FERRY_REPORT_INTERVAL=2", "-e", "FERRY_SESSION_TIMEOUT_MS=6000",
        os.environ["FERRY_E2E_IMAGE"],
        "run", "-f", "/etc/ferry/obsdumptask.yaml", "--duration", "15",
        "--set", f"spec.source.bootstrapServers={kafka.bootstrap}",
        "--set", f"spec.target.endpoint={store.endpoint}",
        "--set", "spec.dumpPeriodSeconds=5",
    ]  # fmt: skip
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, timeout=120)
    stored = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            stored += len(body.decode().splitlines())
            print(f"  s3://{bucket}/{item['Key']}  {item['Size']} bytes", flush=True)
    print(f"{stored} of {RECORDS} records in s3://{bucket}")
    sys.exit(0 if stored == RECORDS else 1)
PYEOF
fi
timed "end to end" "$t"

# ---------------------------------------------------------------------------------------------
if [[ -n ${FERRY_IMAGE_ARCHIVE:-} ]]; then
    say "saving $IMAGE to $FERRY_IMAGE_ARCHIVE"
    rm -f "$FERRY_IMAGE_ARCHIVE"
    podman save --format docker-archive -o "$FERRY_IMAGE_ARCHIVE" "$IMAGE"
fi

say "done: $IMAGE"
printf '%s\n' "${TIMINGS[@]}"
printf '%-34s %4ss\n' "total" "$(($(date +%s) - T0))"
echo "work directory: $WORK ($(du -sh "$WORK" | cut -f1)); to use the image:"
echo "  export CONTAINERS_CONF=$WORK/containers.conf CONTAINERS_STORAGE_CONF=$WORK/storage.conf"
echo "  podman run --rm --read-only --cap-drop ALL $IMAGE --help"
