FROM docker.io/library/python:3.12-slim@sha256:4c0a8c9b1e2f3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d
RUN mkdir -p /safe_data /safe_outputs /scratch
RUN curl -LsSf https://astral.sh/uv/install.sh | sh
# Checked, so no finding:
RUN curl -fsSLo get.sh https://example.org/get.sh && echo "abc  get.sh" | sha256sum -c - && sh get.sh
RUN wget https://example.org/install-tool.sh && bash install-tool.sh --prefix /opt
USER 1000
