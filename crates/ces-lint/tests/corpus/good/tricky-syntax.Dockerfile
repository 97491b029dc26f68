# syntax=docker/dockerfile:1
# escape=\
ARG TAG=3.12-slim
ARG DIGEST=sha256:4c0a8c9b1e2f3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d
FROM docker.io/library/python:${TAG}@${DIGEST}
ENV HF_HUB_OFFLINE 1
RUN echo "<<EOF is text, not a heredoc" \
    # a comment inside a continuation
    && mkdir -p /safe_data \
                /safe_outputs \
                /scratch \

    && useradd -u 1000 researcher
Copy --chown=1000:1000 ["src dir/", "/app/"]
user researcher:researcher
CMD python -c 'print(1<<2)'
