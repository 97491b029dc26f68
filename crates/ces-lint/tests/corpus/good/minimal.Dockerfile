# Tools built on the build machine's platform, copied into an amd64 image.
FROM --platform=$BUILDPLATFORM docker.io/library/golang:1.22@sha256:4c0a8c9b1e2f3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d AS tools
RUN go build -o /out/tool ./cmd/tool

FROM docker.io/library/python:3.12-slim@sha256:4c0a8c9b1e2f3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d
RUN mkdir -p /safe_data /safe_outputs /scratch \
 && useradd --create-home researcher
COPY app/ /app/
COPY --from=tools /out/tool /usr/local/bin/
USER researcher
CMD ["python", "/app/main.py"]
