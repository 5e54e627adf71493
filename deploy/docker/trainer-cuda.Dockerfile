# The trainer with CUDA training (`--features cuda`: cuDNN convolutions, the SDK's GPU
# engine), built from source. Linted in CI, not built there (no GPU, no registry); see
# GPU.md for the toolkit versions: nvcc 13.0 to match driver 580 (CUDA 13.0).
#   docker build -f deploy/docker/trainer-cuda.Dockerfile -t cifar-trainer:cuda .
#   docker run --gpus all -v $PWD/data:/work/data cifar-trainer:cuda fit --config configs/gpu-speedrun.toml
FROM nvidia/cuda:13.0.0-cudnn-devel-ubuntu24.04 AS build
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends \
      ca-certificates curl build-essential pkg-config protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN curl -fsSL https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0
ENV PATH=/root/.cargo/bin:$PATH \
    CUDA_COMPUTE_CAP=90
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p cifar-trainer --features cuda --bin trainer \
 && strip target/release/trainer

FROM nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends fonts-dejavu-core \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --create-home --home-dir /work --shell /usr/sbin/nologin cifar
COPY --from=build /src/target/release/trainer /usr/local/bin/trainer
COPY configs/ /work/configs/
USER 10001:10001
WORKDIR /work
ENTRYPOINT ["/usr/local/bin/trainer"]
CMD ["--help"]
