# syntax=docker/dockerfile:1
# dbrev: the operator and the CLI in one image.
#   docker build -t dbrev:dev .        (or: make image IMG=dbrev:dev)
#   docker run --rm dbrev:dev --help
# Two stages: the builder turns the project and its dependencies into wheels; the final image only
# installs those wheels. No compiler, no pip cache, no source tree in the final image.

# ---- builder: wheels for dbrev and every dependency
FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Every dependency (psycopg[binary], pglast, ...) ships manylinux wheels for amd64 and arm64, so no
# compiler is needed. Should one ever lack a wheel for your platform, install build-essential HERE,
# in the builder stage only.
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN pip wheel --wheel-dir /wheels .

# ---- final: a slim Python with the wheels installed, running as a non-root user
FROM python:3.11-slim
LABEL org.opencontainers.image.title="dbrev" \
      org.opencontainers.image.description="Keeps each PostgreSQL database at the Alembic revision its owners declare" \
      org.opencontainers.image.source="https://github.com/dbrev/dbrev" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    DBREV_SCRIPTS_DIR=/tmp/dbrev-scripts
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels dbrev \
 && groupadd --system --gid 65532 dbrev \
 && useradd --system --uid 65532 --gid 65532 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin dbrev
# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080 8081
ENTRYPOINT ["dbrev"]
CMD ["operator", "-A"]
