# syntax=docker/dockerfile:1
# The spotgen worker image: `spotgen worker` on CUDA, non-root, no model inside (models come from EFS).
#
#   docker build -t spotgen-worker .                                # attention: PyTorch SDPA (the default)
#   docker build --build-arg XFORMERS=0.0.35 -t spotgen-worker .    # also xformers at that exact version, used
#                                                                   # where measured faster (docs/deploy.md, step 2)
#
# Probes: the worker serves GET /livez, /readyz and /metrics on SPOTGEN_METRICS_PORT (9400). Kubernetes uses
# HTTP probes on them (infra/k8s/base/deployment.yaml); `spotgen worker --check` asks /readyz and exits 0 or
# 1, for exec probes and the HEALTHCHECK below (which Docker and ECS use, Kubernetes ignores).
#
# The base is CUDA's "base" flavour (the CUDA runtime and the settings the NVIDIA container toolkit reads):
# torch's CUDA wheels bring their own cuBLAS, cuDNN and NCCL, so a "runtime" or "cudnn" base would hold a
# second copy of them (several GB). The host provides the driver (Bottlerocket's NVIDIA variant).

# ---- build: a virtual environment with torch (CUDA), diffusers and spotgen, pinned by constraints.txt ------
FROM nvidia/cuda:12.8.1-base-ubuntu24.04 AS build

# Ubuntu's archive keeps only the current version of a package, so apt pins would break the build within
# weeks; the pinned base image tag fixes the distribution release instead.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
 && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv

WORKDIR /src
COPY constraints.txt ./

# torch first, its CUDA build: constraints.txt pins 2.13.0, and the PyTorch index serves it as 2.13.0+cu128
# (a local version that `==2.13.0` accepts). torch pins its nvidia-* and triton wheels exactly.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
RUN pip install --no-cache-dir --extra-index-url "${TORCH_INDEX_URL}" -c constraints.txt torch==2.13.0

COPY pyproject.toml README.md ./
COPY spotgen ./spotgen
COPY runtime ./runtime
COPY pipelines ./pipelines
COPY lambdas ./lambdas
# The worker's packages, then spandrel (upscaler models) without the torchvision it declares: PyPI's is a CUDA 13
# build that this torch refuses, and transformers imports torchvision whenever it is installed (pyproject.toml)
RUN pip install --no-cache-dir -c constraints.txt ".[worker]" \
 && pip install --no-cache-dir --no-deps -c constraints.txt spandrel einops

# Optional: xformers, at the exact version XFORMERS names, so that two builds of one tag hold the same one.
# Its wheels name the torch they were built for (up to 0.0.34 exactly one version; 0.0.35 a range, on PyTorch's
# stable ABI): with torch pinned by -c constraints.txt, pip refuses a version made for another torch, and
# --only-binary refuses a source build (no nvcc here). Anything but a version (1, latest) stops the build.
ARG XFORMERS=""
RUN case "${XFORMERS}" in \
      ""|0) ;; \
      *[!0-9a-z.]*|[!0-9]*|*.|*..*|[0-9]|[0-9][0-9]) \
        echo "XFORMERS=${XFORMERS}: give the exact xformers version to install (e.g. 0.0.35), one whose wheels" \
             "support torch 2.13.0 (docs/deploy.md, step 2)" >&2; exit 1 ;; \
      *) pip install --no-cache-dir --only-binary=xformers --extra-index-url "${TORCH_INDEX_URL}" \
           -c constraints.txt "xformers==${XFORMERS}" ;; \
    esac

# ---- final: Python and the virtual environment, no compiler, no package caches ---------------------------
# Without a compiler and Python.h, torch.compile cannot build its kernels: a worker refuses SPOTGEN_COMPILE at
# start-up with that reason (runtime/models/nodecache.py, compile_toolchain_problem).
FROM nvidia/cuda:12.8.1-base-ubuntu24.04

# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 spotgen \
 && useradd --system --uid 10001 --gid spotgen --no-create-home --home-dir /tmp --shell /usr/sbin/nologin spotgen

COPY --from=build /opt/venv /opt/venv

# The root filesystem is read-only in the pod: every cache points into /tmp (an emptyDir there). Models are
# never fetched from a hub (HF_HUB_OFFLINE): they come from SPOTGEN_MODELS_DIR on EFS.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    HF_HOME=/tmp/huggingface \
    HF_HUB_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    TRITON_CACHE_DIR=/tmp/.triton \
    SPOTGEN_DEVICE=cuda \
    SPOTGEN_MODELS_DIR=/models \
    SPOTGEN_METRICS_PORT=9400

USER 10001:10001
WORKDIR /tmp
EXPOSE 9400

HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 CMD ["spotgen", "worker", "--check"]

ENTRYPOINT ["spotgen", "worker"]
