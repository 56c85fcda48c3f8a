# One image per stage: `docker build --build-arg STAGE=intake .` (STAGE is a
# binary name: intake, image-generator, video-generator, video-poller,
# downloader, janitor or asmr). cargo-chef compiles the dependencies in a
# layer of their own, so a change to the workspace's code does not rebuild
# them. The runtime is Debian slim with CA certificates and OpenSSL (the
# Google clients' TLS), running as an unprivileged user.

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
ARG STAGE
RUN test -n "${STAGE}" || { echo "build with --build-arg STAGE=<binary>" >&2; exit 1; }
RUN cargo build --release --locked --bin "${STAGE}" \
 && cp "target/release/${STAGE}" /usr/local/bin/stage

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# Versions float with the release's security updates on purpose.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin asmr
COPY --from=builder /usr/local/bin/stage /usr/local/bin/stage
USER 10001:10001
ENV RUST_LOG=info
# Cloud Run sets PORT; the services bind 0.0.0.0:$PORT (8080 by default).
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/stage"]
