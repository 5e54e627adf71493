# The trainer (CPU) from a binary built on the host (scripts/build-images.sh stages the
# context). Mount the data and the runs:
#   podman run -v $PWD/data:/work/data -v $PWD/runs:/work/runs cifar-trainer \
#     fit --config /work/configs/cpu.toml
ARG BASE=localhost/cifar-edge-base:bookworm
FROM ${BASE}
# Fonts for the plots' labels (without them the plots are drawn unlabelled).
# hadolint ignore=DL3008
RUN if [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then \
      apt-get update && apt-get install -y --no-install-recommends fonts-dejavu-core && \
      rm -rf /var/lib/apt/lists/*; \
    fi \
 && useradd --uid 10001 --user-group --create-home --home-dir /work --shell /usr/sbin/nologin cifar
COPY trainer /usr/local/bin/trainer
COPY configs/ /work/configs/
USER 10001:10001
WORKDIR /work
ENTRYPOINT ["/usr/local/bin/trainer"]
CMD ["--help"]
