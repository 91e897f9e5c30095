# dbrev: the operator and the CLI in one image.
#   docker build -t dbrev:dev .        (or: make image IMG=dbrev:dev)
#   docker run --rm dbrev:dev --help
# Two stages: the builder installs dbrev and its dependencies into a virtual environment; the final
# image copies only that environment. No compiler, no pip cache, no wheels, no source tree in it.
# Works with the classic builder and BuildKit alike (no RUN --mount), with docker, podman or buildah.
#
# BASE_IMAGE: any Debian-like image with python3 (3.10+) and its venv module. The default is the
# public python:3.11-slim; dbrev's CI builds on a Debian base it makes itself (no registry there).
# Offline builds: put wheels of dbrev and every dependency into .wheelhouse/ (`make wheelhouse`);
# the builder then installs from there with --no-index and needs no network.
ARG BASE_IMAGE=python:3.11-slim

# ---- builder: /opt/dbrev, a virtual environment holding dbrev and every dependency
# The operator image installs dbrev[operator] (kopf, kubernetes, prometheus-client); plain `dbrev` is
# the lean engine + CLI that migration pods run, also what an application image adds (docs/install.md).
FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Every dependency (psycopg[binary], pglast, ...) ships manylinux wheels for amd64 and arm64, so no
# compiler is needed. Should one ever lack a wheel for your platform, install build-essential HERE,
# in the builder stage only.
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY .wheelhouse/ /wheelhouse/
RUN python3 -m venv /opt/dbrev \
 && if ls /wheelhouse/*.whl >/dev/null 2>&1; then \
      /opt/dbrev/bin/pip install --no-index --find-links=/wheelhouse 'dbrev[operator]'; \
    else \
      /opt/dbrev/bin/pip install '.[operator]' ; \
    fi \
 && /opt/dbrev/bin/dbrev --help >/dev/null \
 && /opt/dbrev/bin/python -c 'import dbrev.controller.main'

# ---- final: the same base with the environment copied in, running as a non-root user
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="dbrev" \
      org.opencontainers.image.description="Keeps each PostgreSQL database at the Alembic revision its owners declare" \
      org.opencontainers.image.source="https://github.com/dbrev/dbrev" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/dbrev/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp \
    DBREV_SCRIPTS_DIR=/tmp/dbrev-scripts
COPY --from=builder /opt/dbrev /opt/dbrev
RUN groupadd --system --gid 65532 dbrev \
 && useradd --system --uid 65532 --gid 65532 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin dbrev
# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080 8081
ENTRYPOINT ["dbrev"]
CMD ["operator", "-A"]
