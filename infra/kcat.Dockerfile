# syntax=docker/dockerfile:1
# kcat with Avro support (-s value=avro -r URL): Debian's and Alpine's kcat
# packages are built without libserdes, so this builds kcat 1.7.1 with its own
# bootstrap script, which compiles librdkafka, libserdes, avro-c and yajl
# statically into one binary.
FROM debian:bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
      build-essential ca-certificates cmake curl pkg-config \
      libssl-dev libsasl2-dev zlib1g-dev libzstd-dev libcurl4-openssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /build
# bootstrap.sh skips a download whose directory exists: jansson comes from its
# GitHub release instead of the script's plain-HTTP mirror.
RUN curl -fsSL https://github.com/edenhill/kcat/archive/refs/tags/1.7.1.tar.gz | tar xz --strip-components=1 \
    && mkdir -p tmp-bootstrap \
    && curl -fsSL https://github.com/akheron/jansson/releases/download/v2.14/jansson-2.14.tar.gz | tar xz -C tmp-bootstrap \
    && mv tmp-bootstrap/jansson-2.14 tmp-bootstrap/libjansson \
    && ./bootstrap.sh --no-install-deps \
    && ./kcat -V | grep -q 'Avro'

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 libsasl2-2 zlib1g libzstd1 libcurl4 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /build/kcat /usr/local/bin/kcat
USER 65532
ENTRYPOINT ["kcat"]
CMD ["-V"]
