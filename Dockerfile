# dias_dist for GPU clusters: CUDA runtime + Python venv with the pinned stack (torch 2.13.0 CUDA wheel,
# triton, deepspeed, ray), the package with extras [deepspeed,kernels,tune], a non-root user and
# torchrun as the entry point. No data, runs or credentials are copied (see .dockerignore); mount
# shards/ and runs/ at run time (docs/docker.md).
#
#   docker build --build-arg GIT_SHA=$(git rev-parse HEAD) -t dias_dist:0.1.0 .
#   docker run --gpus all --ipc=host -v "$PWD/shards:/opt/dias/shards:ro" -v "$PWD/runs:/opt/dias/runs" \
#       dias_dist:0.1.0 --nproc_per_node=gpu launch/train.py configs/full/vss_net.yaml data.shards=shards/dsa
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    WDS_SECURE=1

# python3-dev + build-essential: Triton compiles its launcher stub and DeepSpeed JIT-builds ops with gcc.
# curl: WebDataset reads http(s):// shards through it (data.shards=https://...).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

WORKDIR /opt/dias

# Dependencies first (their own layer, rebuilt only when the pins change). torch is pinned in the same
# command so no dependency can pull another torch.
COPY requirements/torch.txt requirements/base.txt requirements/
RUN pip install -c requirements/torch.txt -r requirements/torch.txt -r requirements/base.txt

COPY pyproject.toml README.md ./
COPY dias_dist/ dias_dist/
# The extras' packages (deepspeed, triton, ray) are already installed at the pins of base.txt.
RUN pip install -c requirements/torch.txt --no-deps ".[deepspeed,kernels,tune]" \
 && pip check \
 && python -c "import torch, triton, deepspeed, ray, webdataset, mlflow, dias_dist"

COPY launch/ launch/
COPY configs/ configs/
COPY tune.py ./

RUN useradd --create-home --uid 1000 --shell /bin/bash dias \
 && mkdir -p /opt/dias/runs /opt/dias/shards \
 && chown dias:dias /opt/dias/runs /opt/dias/shards
USER dias
ENV TRITON_CACHE_DIR=/home/dias/.cache/triton \
    TORCH_EXTENSIONS_DIR=/home/dias/.cache/torch_extensions \
    TORCHINDUCTOR_CACHE_DIR=/home/dias/.cache/torchinductor

# The commit the image was built from (.git is not sent to the build): MLflow runs started in the image
# carry it as mlflow.source.git.commit and git_sha (dias_dist.track.git_sha reads DIAS_GIT_SHA when
# there is no checkout). Declared after every RUN, so a new commit rebuilds no layer but this one.
ARG GIT_SHA=unknown
LABEL org.opencontainers.image.revision=$GIT_SHA
ENV DIAS_GIT_SHA=$GIT_SHA

EXPOSE 5000
ENTRYPOINT ["torchrun"]
CMD ["--nproc_per_node=gpu", "launch/train.py", "--help"]
