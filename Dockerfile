# weather-al: the Label Studio ML backend (`weather-al serve`) and its training worker (`weather-al worker`).
# CPU-only image; for a GPU, swap the PyTorch index below for a CUDA one (e.g. .../whl/cu128).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# PyTorch first, from PyTorch's CPU index: from PyPI, `pip install .` would pull the multi-GB CUDA build.
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
RUN pip install --index-url https://download.pytorch.org/whl/cpu \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

WORKDIR /src
COPY pyproject.toml README.md label_config.xml ./
COPY model ./model
COPY backend ./backend
# Pin the CPU builds just installed, so that no dependency of the project can swap them for CUDA ones.
RUN pip freeze | grep -E '^(torch|torchvision)==' > /tmp/torch-cpu.txt \
    && pip install --constraint /tmp/torch-cpu.txt . \
    && rm /tmp/torch-cpu.txt

RUN useradd --create-home --uid 1000 --user-group weather \
    && mkdir -p /data/models \
    && chown weather:weather /data/models

ENV PORT=9090 \
    MODEL_DIR=/data/models
VOLUME ["/data/models"]
USER weather
WORKDIR /home/weather
EXPOSE 9090

# No curl in slim images: ask /health with the interpreter that is already there.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '9090'), timeout=4)"]

CMD ["weather-al", "serve"]
