# One image for the operator and its workers: `ferry operator` (the default) and `ferry worker`.
#
#   docker build -t ferry:0.1.0 .          (or: podman build -t ferry:0.1.0 .)
#
# Build arguments (docs/image.md):
#   BASE_IMAGE     a Debian-like image with python3 (3.11+); an air-gapped build names a local one
#                  (deploy/image/build-local.sh builds it from debootstrap)
#   PIP_CERT       path of a CA bundle, visible during the build, that pip trusts (TLS-intercepting
#                  proxies); used by the pip step only, never stored in the runtime image
#   PIP_INDEX_URL  a PyPI mirror, for builds without access to PyPI itself
#   VERSION, REVISION, SOURCE   OCI labels
#
# The runtime stage holds the base's Python and /opt/ferry (a virtualenv without pip or setuptools)
# and no compilers or build tools. It runs as the numeric non-root user 10001 and needs no writable
# path but /tmp (an emptyDir in Kubernetes): bytecode is compiled at build time, and Python never
# writes .pyc files or caches at run time.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG PIP_CERT=
ARG PIP_INDEX_URL=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml constraints.txt ./
# `python3` exists in both python:3.11-slim and a plain Debian base (which has no `python`).
# confluent-kafka ships librdkafka in its wheel: nothing is compiled here, so no compiler is installed.
# Empty build args are unset: pip would read an empty PIP_CERT / PIP_INDEX_URL as a value.
# The dependencies first, in a layer of their own (an empty package and README stand in for the real
# ones), so that a change to the code or the README does not download them again. With the `parquet`
# extra (pyarrow), for ObsDumpTask's Parquet objects.
RUN set -eu; \
    [ -n "${PIP_CERT:-}" ] || unset PIP_CERT; \
    [ -n "${PIP_INDEX_URL:-}" ] || unset PIP_INDEX_URL; \
    python3 -m venv /opt/ferry; \
    mkdir -p operator/ferry; touch README.md operator/ferry/__init__.py; \
    /opt/ferry/bin/python -m pip install --no-compile -c constraints.txt '.[parquet]'; \
    rm -rf README.md operator build
COPY README.md ./
COPY operator ./operator
# Then Ferry itself; pip, setuptools and wheel leave the virtualenv. Bytecode is compiled here, for a
# read-only root: hash-based .pyc files stay valid whatever the file times.
RUN set -eu; \
    [ -n "${PIP_CERT:-}" ] || unset PIP_CERT; \
    [ -n "${PIP_INDEX_URL:-}" ] || unset PIP_INDEX_URL; \
    /opt/ferry/bin/python -m pip install --no-compile --no-deps --force-reinstall -c constraints.txt .; \
    /opt/ferry/bin/python -m pip uninstall -y pip setuptools wheel; \
    rm -f /opt/ferry/bin/activate* /opt/ferry/bin/Activate.ps1; \
    /opt/ferry/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/ferry/lib; \
    /opt/ferry/bin/ferry --help > /dev/null

FROM ${BASE_IMAGE}
# No package installers or build tools at run time: drop the base image's pip, setuptools and wheel, and
# ensurepip with the wheels it installs (python:3.11-slim ships all of them; Debian's python3-venv
# brings /usr/share/python-wheels).
RUN set -eu; \
    for sp in /usr/local/lib/python3*/site-packages /usr/lib/python3/dist-packages; do \
        [ -d "$sp" ] || continue; \
        rm -rf "$sp"/pip "$sp"/pip-* "$sp"/setuptools "$sp"/setuptools-* "$sp"/wheel "$sp"/wheel-* \
               "$sp"/pkg_resources "$sp"/_distutils_hack "$sp"/distutils-precedence.pth; \
    done; \
    rm -f /usr/local/bin/pip /usr/local/bin/pip3* /usr/local/bin/wheel /usr/bin/pip /usr/bin/pip3*; \
    rm -rf /usr/local/lib/python3*/ensurepip /usr/lib/python3*/ensurepip /usr/share/python-wheels
COPY --from=build /opt/ferry /opt/ferry
# HOME and the working directory are /tmp, the only writable path (an emptyDir in Kubernetes).
ENV PATH=/opt/ferry/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8
WORKDIR /tmp
# The operator's liveness endpoint and a worker's /metrics and /healthz.
EXPOSE 8081 8080
# Numeric, so that runAsNonRoot can verify it without a passwd entry.
USER 10001:10001
ENTRYPOINT ["ferry"]
CMD ["operator"]

# Last, so that a new revision only rebuilds this step.
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/ferry-dev/ferry
LABEL org.opencontainers.image.title="ferry" \
      org.opencontainers.image.description="Kubernetes operator for Kafka data integration: data access, topic sync and dumps to S3-compatible object storage" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
