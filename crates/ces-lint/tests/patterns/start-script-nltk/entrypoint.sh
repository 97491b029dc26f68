#!/bin/sh
set -e
exec python /app/serve.py "$@"
