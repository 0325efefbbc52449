# infermeter container image: a Prometheus exporter for GPU nodes serving LLMs.
#
#   docker build -t infermeter:0.1.0 --build-arg VERSION=0.1.0 .
#   docker run --rm --gpus all -p 9416:9416 infermeter:0.1.0 --engine llama=http://host.docker.internal:8000
#
# Base image: pinned by exact version tag. The tag is not immutable: CI / the release job should
# pin the digest as well (python:3.12.8-slim-bookworm@sha256:...), resolved with
# `docker buildx imagetools inspect python:3.12.8-slim-bookworm` at release time and kept current
# by a bot such as Renovate or Dependabot.
#
# GPUs: the image ships no NVIDIA library. libnvidia-ml.so (NVML) is injected at run time by the
# NVIDIA container runtime / toolkit: `docker run --gpus all ...`, or the environment
# NVIDIA_VISIBLE_DEVICES=all and NVIDIA_DRIVER_CAPABILITIES=utility with the nvidia runtime
# (Kubernetes: the NVIDIA device plugin and runtimeClassName: nvidia). "utility" is the only
# capability NVML needs. Without a GPU the exporter still starts and logs "NVML unavailable: ...".
#
# Requires BuildKit (Docker >= 23 by default) or Buildah/Podman for RUN --mount.

# ---------------------------------------------------------------------------------------------
# build: a wheel of the project and wheels of all its dependencies
# ---------------------------------------------------------------------------------------------
FROM python:3.12.8-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# Only what the wheel needs (.dockerignore keeps everything else out of the context).
COPY pyproject.toml README.md LICENSE ./
COPY exporter ./exporter

RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m pip wheel --wheel-dir /wheels --find-links /wheels infermeter

# ---------------------------------------------------------------------------------------------
# runtime: the wheels only; no compiler, no source tree, no pip cache
# ---------------------------------------------------------------------------------------------
FROM python:3.12.8-slim-bookworm AS runtime

ARG VERSION=0.1.0

LABEL org.opencontainers.image.title="infermeter" \
      org.opencontainers.image.description="Prometheus exporter for GPU nodes serving LLMs: NVML + vLLM/TGI metrics, latency percentiles, throughput, KV-cache pressure, cost and right-sizing" \
      org.opencontainers.image.source="https://github.com/infermeter/infermeter" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    NVIDIA_DRIVER_CAPABILITIES=utility

# The wheels are bind-mounted from the build stage, so they never land in a layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-index --find-links /wheels infermeter \
 && groupadd --system --gid 10001 infermeter \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin infermeter

# Numeric UID:GID so that Kubernetes runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001

EXPOSE 9416

# /healthz is 200 while collection runs and 503 when it has stalled for 3 intervals. Slim images
# have no curl; urllib raises (exit 1) on a refused connection and on any non-2xx answer.
# It assumes the default --listen port 9416; change it here if you change --listen.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9416/healthz', timeout=4)"]

ENTRYPOINT ["infermeter"]
