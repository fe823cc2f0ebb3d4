# syntax=docker/dockerfile:1
# The asr-optimize GPU worker: CUDA + cuDNN + TensorRT + PyTorch (NGC PyTorch image) + this project, running a
# Prefect process worker. Build from the repository root:
#
#   docker build -f docker/worker.Dockerfile -t asr-optimize-worker:latest .
#
# Engines are only valid for the TensorRT version they were built with: keep NGC_TAG equal to the tritonserver
# image's tag (docker/docker-compose.yml passes the same NGC_TAG to both). NGC 25.xx images ship Python 3.12,
# which this project needs (>= 3.11); 24.xx ship Python 3.10.
ARG NGC_TAG=25.10
FROM nvcr.io/nvidia/pytorch:${NGC_TAG}-py3 AS worker

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    ASR_OPTIMIZE_HOME=/opt/asr-optimize \
    HF_HOME=/data/hf \
    HF_HUB_DISABLE_TELEMETRY=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    PREFECT_WORKER_WEBSERVER_HOST=0.0.0.0 \
    PREFECT_WORKER_WEBSERVER_PORT=8080

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# libsndfile for soundfile, espeak-ng for the synthetic Hindi test set, curl for the health check
# (unpinned: the versions come with the base image's Ubuntu release)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libsndfile1 espeak-ng curl \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/asr-optimize
COPY pyproject.toml README.md prefect.yaml ./
COPY asr_optimize ./asr_optimize
COPY flows ./flows
COPY tasks ./tasks
COPY blocks ./blocks
COPY deploy ./deploy

# Keep the image's own torch / TensorRT / numpy builds (pip must not replace them with PyPI wheels), install
# the project with the Triton client and the S3 blocks, then swap the CPU onnxruntime for the CUDA build.
RUN pip list --format=freeze | grep -iE '^(torch|torchvision|torchaudio|tensorrt[a-z0-9_-]*|numpy)==' \
        > /tmp/ngc-constraints.txt \
    && pip install -c /tmp/ngc-constraints.txt -e ".[triton]" "cuda-python>=12" "prefect-aws>=0.5" \
    && pip uninstall -y onnxruntime \
    && pip install -c /tmp/ngc-constraints.txt "onnxruntime-gpu>=1.18"

# Fail the build, not the first nightly run, if TensorRT's Python API is missing from the base image.
RUN python -c "import tensorrt, torch, onnxruntime, prefect; print('tensorrt', tensorrt.__version__, 'torch', torch.__version__, 'onnxruntime', onnxruntime.__version__, 'prefect', prefect.__version__)"

# Run as an unprivileged user; /data holds the Hugging Face cache, the local store and reports.
RUN useradd --create-home --uid 10001 asr \
    && mkdir -p /data /models \
    && chown -R asr:asr /data /models /opt/asr-optimize
USER 10001
VOLUME ["/data"]
EXPOSE 8080

# the worker's own health endpoint (prefect worker start --with-healthcheck)
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["curl", "-fsS", "http://127.0.0.1:8080/health"]

ENTRYPOINT ["prefect", "worker", "start", "--type", "process", "--with-healthcheck"]
CMD ["--pool", "gpu-pool", "--name", "gpu-worker"]
