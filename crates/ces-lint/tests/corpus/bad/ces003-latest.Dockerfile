ARG BASE=ghcr.io/org/base
FROM ${BASE} AS build
RUN make
FROM ghcr.io/org/runtime:latest
RUN mkdir -p /safe_data /safe_outputs /scratch
COPY --from=build /out /app
USER 1000
