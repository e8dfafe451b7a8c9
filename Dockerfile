# syntax=docker/dockerfile:1
# ls-token-refresher: a static-enough Rust binary on distroless (glibc, CA certificates, no shell), non-root.
#
#   docker build -t ls-token-refresher .
#   docker run --rm ls-token-refresher --help
#
# The builder's Rust must satisfy Cargo.toml's rust-version (1.89); bookworm matches the runtime's glibc.
ARG RUST_VERSION=1.89

FROM rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cargo loads every workspace member's manifest (and targets) even when building one binary.
COPY tests/e2e ./tests/e2e
# Cache mounts keep the registry and target dir between builds; the binary is copied out of the cached target.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin ls-token-refresher \
 && install -D -m 0755 target/release/ls-token-refresher /out/ls-token-refresher

# distroless/cc: glibc + libgcc + ca-certificates (/etc/ssl/certs/ca-certificates.crt) + tzdata, nothing else.
# The :nonroot variant runs as uid/gid 65532, which the chart and deploy/ manifests also set.
#
# Offline (no Docker daemon, no registry: CI and the test node): deploy/image/build.sh builds the same image
# from `cargo build --release` with a few lines of Python — FROM scratch in effect — and puts in exactly what
# this stage gets from distroless: the glibc loader and the shared objects the binary needs (found with ldd,
# from the build machine's Debian 12), Debian's CA bundle, passwd/group with nonroot 65532, nsswitch.conf,
# /tmp and /home/nonroot; no shell, no tzdata (unused). Its user, entrypoint, cmd, ports and labels are read
# from this file, and deploy/image/check.py fails if the built image and this file disagree, including on:
# base-files: /etc/ssl/certs/ca-certificates.crt /etc/passwd /etc/group /etc/nsswitch.conf /tmp /home/nonroot
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="ls-token-refresher" \
      org.opencontainers.image.description="Keeps a Label Studio access token fresh for Kubernetes workloads" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/ls-token-refresher /usr/local/bin/ls-token-refresher
USER 65532:65532
# Admin endpoint: /livez, /readyz, /metrics.
EXPOSE 9417
ENTRYPOINT ["/usr/local/bin/ls-token-refresher"]
CMD ["run"]
