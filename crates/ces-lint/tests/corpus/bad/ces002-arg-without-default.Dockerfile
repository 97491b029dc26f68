ARG TAG
FROM ghcr.io/org/python:$TAG
USER 1000
RUN mkdir -p /safe_data /safe_outputs /scratch
