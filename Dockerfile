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

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS chef
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
ARG STAGES="intake image-generator video-generator video-poller downloader janitor"
# STAGES is split into words on purpose.
# hadolint ignore=SC2086
RUN set --; for stage in ${STAGES}; do set -- "$@" --bin "${stage}"; done \
 && cargo build --release --locked "$@" \
 && mkdir -p /out \
 && for stage in ${STAGES}; do cp "target/release/${stage}" /out/; done

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
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
