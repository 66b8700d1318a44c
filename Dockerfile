# One image for the operator and its workers: `ferry operator` / `ferry worker`.
# Build: docker build -t ferry:0.1.0 .   (BASE_IMAGE lets air-gapped builds use a local base)
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY operator ./operator
# confluent-kafka ships librdkafka in its wheel: nothing is compiled here.
RUN python -m venv /opt/ferry \
 && /opt/ferry/bin/pip install --no-cache-dir --no-compile -c constraints.txt . \
 && /opt/ferry/bin/pip uninstall -y pip setuptools

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="ferry" \
      org.opencontainers.image.description="Kubernetes operator for Kafka data integration" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
COPY --from=build /opt/ferry /opt/ferry
ENV PATH=/opt/ferry/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# Numeric non-root user, so runAsNonRoot can verify it; /tmp is the only writable path (an emptyDir).
USER 10001:10001
ENTRYPOINT ["ferry"]
CMD ["operator"]
