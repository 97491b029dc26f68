FROM docker.io/library/python:3.12-slim@sha256:4c0a8c9b1e2f3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d
RUN mkdir -p /safe_data /safe_outputs /scratch
RUN pip install --no-cache-dir numpy==2.0.1
# a comment between does not separate them
RUN pip install --no-cache-dir pandas==2.2.2
RUN useradd researcher
USER researcher
