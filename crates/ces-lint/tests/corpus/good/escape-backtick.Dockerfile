# escape=`
# Windows-style escapes: backslashes are literal, backticks continue lines.
FROM mcr.microsoft.com/dotnet/runtime:8.0@sha256:4c0a8c9b1e2f3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d
RUN mkdir -p /safe_data `
             /safe_outputs `
             # a comment inside the continuation
             /scratch `
 && useradd app
COPY ["bin\\Release", "C:\\app\\"]
USER app:app
