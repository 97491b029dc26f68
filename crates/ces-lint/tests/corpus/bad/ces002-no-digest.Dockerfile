FROM docker.io/library/python:3.12-slim
RUN mkdir -p /safe_data /safe_outputs /scratch
USER 1000
