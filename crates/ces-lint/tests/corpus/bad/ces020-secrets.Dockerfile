FROM docker.io/library/python:3.12-slim@sha256:4c0a8c9b1e2f3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d
ARG HF_TOKEN
ENV POSTGRES_PASSWORD=changeme TOKENIZERS_PARALLELISM=false
ENV DATABASE_URL=postgres://app:hunter2@db/cohort PGPASSWORD=hunter2 GITHUB_PAT=ghp_x
# Not secrets: a reference to another variable, where a secret is or how big, and names that only contain the words.
ENV DB_PASSWORD=$DB_PASSWORD_FROM_BUILD PASSAGE_COUNT=3 AWS_SECRET_ACCESS_KEY= KEYBOARD=us
ENV POSTGRES_PASSWORD_FILE=/run/secrets/db MAX_TOKENS=512 OLD_PWD=/tmp PASS_THROUGH=1 FILE_PAT=*.csv HF_TOKEN_PATH=/x
ENV REDIS_URL=redis://db:6379/0
RUN mkdir -p /safe_data /safe_outputs /scratch
USER 1000
