ARG PLATFORM=linux/arm64/v8
FROM --platform=$PLATFORM docker.io/library/python:3.12-slim@sha256:4c0a8c9b1e2f3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d AS build
RUN make
FROM docker.io/arm64v8/python:3.12-slim@sha256:4c0a8c9b1e2f3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d
RUN mkdir -p /safe_data /safe_outputs /scratch
COPY --from=build /out /app
USER 1000
