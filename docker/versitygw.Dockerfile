# syntax=docker/dockerfile:1
# Versity S3 Gateway (versitygw), the S3-compatible server of the project's stack, built from its Go module.
# The local stack (`make tools`) installs the same module and version; see VERSITYGW_VERSION in stack/config.py.
#
#   docker build -f docker/versitygw.Dockerfile -t mlops-versitygw:v1.8.0 .
#   docker run -p 9000:9000 -e ROOT_ACCESS_KEY=... -e ROOT_SECRET_KEY=... mlops-versitygw:v1.8.0
ARG GO_IMAGE=golang:1.26
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${GO_IMAGE} AS build
ARG VERSITYGW_VERSION=v1.8.0
# A static binary (no cgo), so that it runs on any runtime base image.
RUN CGO_ENABLED=0 GOBIN=/out go install -trimpath \
        -ldflags "-s -w -X main.Version=${VERSITYGW_VERSION}" \
        "github.com/versity/versitygw/cmd/versitygw@${VERSITYGW_VERSION}" \
    && /out/versitygw --version

FROM ${RUNTIME_IMAGE}
# curl for the compose healthcheck; ca-certificates in case a backend or IAM service is reached over TLS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --gid 0 --home-dir /data --no-create-home versitygw \
    && mkdir -p /data/buckets /data/versions /data/meta /data/iam \
    && chown -R 10001:0 /data \
    && chmod -R g=u /data \
    && chmod 0700 /data/iam
COPY --from=build /out/versitygw /usr/local/bin/versitygw
USER 10001
# A named volume mounted here starts with the folders above (bucket data, object versions, sidecar metadata, the
# internal IAM's users: --iam-dir /data/iam, private to the gateway's user).
VOLUME ["/data"]
EXPOSE 9000 9001
# The root user's keys come from ROOT_ACCESS_KEY / ROOT_SECRET_KEY (or --access / --secret).
ENTRYPOINT ["/usr/local/bin/versitygw"]
CMD ["--port", ":9000", "--health", "/health", "posix", \
     "--versioning-dir", "/data/versions", "--sidecar", "/data/meta", "/data/buckets"]
