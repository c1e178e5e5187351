# One Dockerfile, one target per part: each image installs only its own extra.
#   docker build --target embedder -t imgsim-embedder .
#   docker build --target index    -t imgsim-index .
#   docker build --target client   -t imgsim-client .
FROM python:3.11-slim AS base
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY imgsim ./imgsim
COPY embedder_service ./embedder_service
COPY index_service ./index_service
COPY client ./client

FROM base AS embedder
# CPU wheels by default; for a GPU host build with --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0 && pip install ".[embedder]"
EXPOSE 50051
CMD ["imgsim-embedder", "--host", "0.0.0.0", "--port", "50051"]

FROM base AS index
RUN pip install ".[index]"
EXPOSE 50052
VOLUME /data
CMD ["imgsim-index", "--host", "0.0.0.0", "--port", "50052", "--data-dir", "/data"]

FROM base AS client
RUN pip install ".[client,datasets]"
ENTRYPOINT ["imgsim"]
CMD ["--help"]
