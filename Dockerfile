# One image per release holding every stage binary; Cloud Run's `command`
# picks the stage (terraform/run.tf), so a release is compiled once:
#
#   docker build --tag asmr .
#   docker run --rm asmr /usr/local/bin/intake --help
#
# cargo-chef compiles the dependencies in a layer of their own, so a change
# to the workspace's code does not rebuild them. The runtime is Debian slim
# with CA certificates (every client speaks TLS through rustls; no OpenSSL),
# running as an unprivileged user. tests/image builds this runtime
# stage's root filesystem from Debian's packages and runs every service in
# it; it reads the release, the packages, the user and the binaries below.

# Both base images are pinned by digest, so a release is built from exactly
# the bytes it was tested with, whatever a tag is moved to; the tag stays
# beside it for readers. To move on: `docker buildx imagetools inspect
# rust:1.95-bookworm` (and debian:bookworm-slim) prints the new digest.
ARG DEBIAN_RELEASE=bookworm

FROM rust:1.95-bookworm@sha256:6258907abe69656e41cd992e0b705cdcfabcbbe3db374f92ed2d47121282d4a1 AS chef
ARG CARGO_CHEF_VERSION=0.1.78
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
# The deployed binaries: terraform's local.functions, one per stage.
ARG STAGES="intake image-generator video-generator video-poller downloader janitor notifier"
# STAGES is split into words on purpose.
# hadolint ignore=SC2086
RUN set --; for stage in ${STAGES}; do set -- "$@" --bin "${stage}"; done \
 && cargo build --release --locked "$@" \
 && mkdir -p /out \
 && for stage in ${STAGES}; do cp "target/release/${stage}" /out/; done

FROM debian:bookworm-slim@sha256:3783cc01769c7b2b1b83a5c5ad96c815348e28ed7da68e2e3687004faa906251 AS runtime
# Versions float with the release's security updates on purpose.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin asmr
COPY --from=builder /out/ /usr/local/bin/
USER 10001:10001
ENV RUST_LOG=info
# Cloud Run sets PORT; the services bind 0.0.0.0:$PORT (8080 by default).
EXPOSE 8080
