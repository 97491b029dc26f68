# syntax=docker/dockerfile:1.7
# A model baked into the image, offline at run time.
ARG REGISTRY=docker.io
ARG PY=${REGISTRY}/library/python:3.12-slim@sha256:4c0a8c9b1e2f3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d

FROM ${PY} AS base
ENV PIP_NO_CACHE_DIR=1
RUN --mount=type=cache,target=/var/cache/apt \
    apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*
RUN pip install "transformers==4.44.0" sentence_transformers

from base AS final
run <<EOF
python -c "from huggingface_hub import snapshot_download; snapshot_download('sentence-transformers/all-MiniLM-L6-v2')"
mkdir -p /safe_data /safe_outputs /scratch
useradd --create-home researcher
EOF
ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
COPY --chown=researcher app/ /app/
COPY <<EOF /app/NOTES.txt
FROM is only text in a heredoc
RUN this too; and results.csv is a word, not a file copied in
EOF
WORKDIR /app
USER researcher
ENTRYPOINT ["python", "main.py"]
