# cifar-serve, built from source in a Rust image: the path for machines that can pull
# images from a registry. Build from the repository root:
#   docker build -f deploy/docker/serve-multistage.Dockerfile -t cifar-serve .
# The runtime stage matches serve.Dockerfile (which CI builds from a host-built binary).
FROM rust:1.95-bookworm AS build
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p cifar-server --bin cifar-serve \
 && strip target/release/cifar-serve

FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin cifar \
 && mkdir -p /models /var/cache/cifar-serve \
 && chown cifar:cifar /var/cache/cifar-serve
COPY --from=build /src/target/release/cifar-serve /usr/local/bin/cifar-serve
ENV CIFAR_SERVE_ADDR=0.0.0.0:8080 \
    CIFAR_SERVE_GRPC_ADDR=0.0.0.0:8001 \
    CIFAR_SERVE_MODEL=/models/model.cifar \
    CIFAR_SERVE_LOG_FORMAT=json \
    CIFAR_SERVE_SHUTDOWN_GRACE_S=25 \
    XDG_CACHE_HOME=/var/cache/cifar-serve
USER 10001:10001
EXPOSE 8080 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
  CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/v2/health/ready"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/cifar-serve"]
