# One Dockerfile, one target per part: each image installs only its own extra and runs as a non-root user.
#   docker build --target embedder     -t imgsim-embedder .       # PyTorch's CPU build
#   docker build --target embedder-gpu -t imgsim-embedder-gpu .   # PyTorch's CUDA build (PyPI's Linux wheels)
#   docker build --target index        -t imgsim-index .
#   docker build --target client       -t imgsim-client .
# Where PyTorch's CPU index cannot be reached but a local wheel of torch 2.13.0+cpu is on pip's path (as on
# our build machines), pass --build-arg TORCH_CPU_INDEX= to skip that index.
FROM python:3.11-slim AS base
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 --user-group imgsim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY imgsim ./imgsim
COPY embedder_service ./embedder_service
COPY index_service ./index_service
COPY client ./client

FROM base AS embedder-base
# One Hugging Face cache shared by every replica (a volume in docker-compose.yml): a hub model is
# downloaded once. A local model is mounted read-only and named with IMGSIM_EMBEDDER_MODEL.
ENV HF_HOME=/cache/huggingface
RUN mkdir -p /cache/huggingface && chown imgsim:imgsim /cache/huggingface
EXPOSE 50051 9101
CMD ["imgsim-embedder", "--host", "0.0.0.0", "--port", "50051"]

FROM embedder-base AS embedder
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install ${TORCH_CPU_INDEX:+--extra-index-url "$TORCH_CPU_INDEX"} "torch==2.13.0+cpu" \
    && pip install ".[embedder]"
USER imgsim

FROM embedder-base AS embedder-gpu
RUN pip install "torch==2.13.0" && pip install ".[embedder]"
USER imgsim

FROM base AS index
RUN pip install ".[index]" && mkdir -p /data && chown imgsim:imgsim /data
USER imgsim
EXPOSE 50052 9102
VOLUME /data
CMD ["imgsim-index", "--host", "0.0.0.0", "--port", "50052", "--data-dir", "/data"]

FROM base AS client
RUN pip install ".[client,datasets]" && mkdir -p /out && chown imgsim:imgsim /out
USER imgsim
WORKDIR /out
ENTRYPOINT ["imgsim"]
CMD ["--help"]
