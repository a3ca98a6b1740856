# dias_dist for GPU clusters: slim Python + a venv with the pinned runtime stack (torch 2.13.0 from PyPI,
# whose wheel brings its own CUDA 13 libraries as nvidia-* wheels; triton, deepspeed, ray), the package
# with extras [deepspeed,kernels,tune] and its configs, a non-root user, tini as PID 1 and torchrun as
# the command. No data, runs, test tools or credentials are copied (see .dockerignore); mount shards/
# and runs/ at run time (docs/docker.md). The host needs an NVIDIA driver >= 580 (CUDA 13).
#
#   docker build --build-arg GIT_SHA=$(git rev-parse HEAD) -t dias_dist:0.1.0 .
#   docker run --gpus all --ipc=host -v "$PWD/shards:/opt/dias/shards:ro" -v "$PWD/runs:/opt/dias/runs" \
#       dias_dist:0.1.0 --standalone --nproc_per_node=gpu launch/train.py configs/full/vss_net.yaml data.shards=shards/dsa
#
# Why no nvidia/cuda base: torch loads the CUDA runtime, cuBLAS, cuDNN, NCCL... from its nvidia-* wheels
# in the venv, never from /usr/local/cuda, so a CUDA runtime base image only adds a second, unused copy
# (and one of another CUDA version as soon as the torch pin moves). The driver (libcuda, nvidia-smi)
# comes from the host through the NVIDIA Container Toolkit. tests/test_image_install_set.py resolves
# this image's install set for its Python and glibc and checks that every CUDA wheel is CUDA 13.
FROM python:3.12.11-slim-bookworm

# NVIDIA_REQUIRE_CUDA: the Container Toolkit refuses to start the container on a driver older than
# CUDA 13 needs (>= 580), with the reason, instead of torch finding no usable GPU inside.
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    WDS_SECURE=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NVIDIA_REQUIRE_CUDA="cuda>=13.0"

# tini: PID 1 that reaps orphaned data-loader workers and forwards signals to torchrun.
# gcc + libc6-dev: Triton compiles its small C launcher stub at run time (Python.h comes with this base).
# No g++, make or nvcc: DeepSpeed gets the trainer's torch AdamW and JIT-builds no op here.
# curl: WebDataset reads http(s):// shards through it (data.shards=https://...).
# Debian's versions are not pinned (DL3008): a stable release replaces a security-fixed package's old
# version in its archive, so a pin would break the build; the base image's tag fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends tini gcc libc6-dev ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

WORKDIR /opt/dias

# Dependencies first (their own layer, rebuilt only when the pins change): the runtime set only, no test
# tools (requirements/test.txt). torch is pinned in the same command so no dependency can pull another torch.
COPY requirements/torch.txt requirements/base.txt requirements/
RUN pip install -c requirements/torch.txt -r requirements/torch.txt -r requirements/base.txt

# configs/ before the package: dias_dist/configs is a link to ../configs, and the installed package ships
# what it points at (a package built without it holds no config).
COPY pyproject.toml README.md ./
COPY configs/ configs/
COPY dias_dist/ dias_dist/
# The extras' packages (deepspeed, triton, ray) are already installed at the pins of base.txt. The last
# check imports the installed package, not the copied source (-P: the current directory is not on sys.path).
RUN pip install -c requirements/torch.txt --no-deps ".[deepspeed,kernels,tune]" \
 && pip check \
 && python -P -c "import torch, triton, deepspeed, ray, webdataset, mlflow, dias_dist.config as c; \
assert c.PACKAGED_CONFIGS.joinpath('debug.yaml').is_file() and c.PACKAGED_CONFIGS.joinpath('full', 'vss_net.yaml').is_file(), c.PACKAGED_CONFIGS"

COPY launch/ launch/
COPY tune.py ./

RUN groupadd --gid 1000 dias \
 && useradd --create-home --uid 1000 --gid 1000 --shell /bin/bash dias \
 && mkdir -p /opt/dias/runs /opt/dias/shards \
 && chown dias:dias /opt/dias/runs /opt/dias/shards
# numeric, so that Kubernetes' runAsNonRoot can verify it
USER 1000:1000
ENV TRITON_CACHE_DIR=/home/dias/.cache/triton \
    TORCH_EXTENSIONS_DIR=/home/dias/.cache/torch_extensions \
    TORCHINDUCTOR_CACHE_DIR=/home/dias/.cache/torchinductor

# The commit the image was built from (.git is not sent to the build): MLflow runs started in the image
# carry it as mlflow.source.git.commit and git_sha (dias_dist.run.track.git_sha reads DIAS_GIT_SHA when
# there is no checkout). Declared after every RUN, so a new commit rebuilds no layer but this one.
ARG GIT_SHA=unknown
LABEL org.opencontainers.image.revision=$GIT_SHA
ENV DIAS_GIT_SHA=$GIT_SHA

EXPOSE 5000
ENTRYPOINT ["/usr/bin/tini", "--", "torchrun"]
CMD ["--nproc_per_node=gpu", "launch/train.py", "--help"]
