FROM ghcr.io/rocker-org/r-ver:4.4.1@sha256:4c0a8c9b1e2f3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-pip \
 && rm -rf /var/lib/apt/lists/*
# ces-lint ignore=CES010
RUN pip3 install --no-cache-dir spacy==3.7.5 \
 && python3 -m spacy download en_core_web_sm
ADD vendor/tools.tar.gz /opt/
ADD --checksum=sha256:24454f830cdb571e2c4ad15481119c43b3cafd48dd869a9b2945d1036d1dc68d https://example.org/tool.sh /usr/local/bin/tool
RUN install -d -o 1000 /{safe_data,safe_outputs,scratch}
USER 1000
