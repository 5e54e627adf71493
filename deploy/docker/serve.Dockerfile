# cifar-serve runtime image from a binary built on the host (what CI builds:
# scripts/build-images.sh stages the build context). Debian 12's rustc is too old for
# the workspace, so the binary comes in ready-made; serve-multistage.Dockerfile builds
# it in a Rust image instead, where one can be pulled.
#
# BASE: any Debian 12 image. Here it is localhost/cifar-edge-base:bookworm, made by
# debootstrap (scripts/build-images.sh); elsewhere debian:bookworm-slim works too.
#
# The model: put model.cifar into the context's models/ folder to bake it in, or leave
# the folder empty and mount a volume on /models (compose.yaml and deploy/k8s do).
ARG BASE=localhost/cifar-edge-base:bookworm
FROM ${BASE}

# curl for the health check (the debootstrap base has it already).
# hadolint ignore=DL3008
RUN if ! command -v curl >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && \
      rm -rf /var/lib/apt/lists/*; \
    fi \
 && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin cifar \
 && mkdir -p /models /var/cache/cifar-serve \
 && chown cifar:cifar /var/cache/cifar-serve

COPY cifar-serve /usr/local/bin/cifar-serve
COPY models/ /models/

# Every flag has a CIFAR_SERVE_* variable (cifar-serve --help); override them with -e
# or a Kubernetes ConfigMap.
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
# SIGTERM: stop accepting, finish what is in flight (up to CIFAR_SERVE_SHUTDOWN_GRACE_S).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/cifar-serve"]
