# robot_sac's image: the inference service by default; the learner from the same image.
#
#   docker build -t robot-sac .
#   docker run -p 8000:8000 -v robot-sac-data:/data -v $PWD/task.json:/etc/robot_sac/task.json:ro \
#       -e ROBOT_SAC_ROBOT_TOKEN=... -e ROBOT_SAC_OPERATOR_TOKEN=... robot-sac
#   docker run -v robot-sac-data:/data -v $PWD/task.json:/etc/robot_sac/task.json:ro \
#       -e ROBOT_SAC_STORE_URL=postgresql://... robot-sac learn --task /etc/robot_sac/task.json --no-progress
#
# CPU by default. On a GPU host, build from a CUDA PyTorch base and keep its torch:
#   docker build --build-arg BASE=pytorch/pytorch:<tag>-cuda<version>-cudnn9-runtime --build-arg TORCH= .
# The simulated tasks (--env PandaReachDense-v3 ...) need the simulators, which the service of a
# real robot does not: add them with --build-arg EXTRAS=service,learner,postgres,sim.
ARG BASE=python:3.11-slim
FROM ${BASE}

ARG TORCH=torch==2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG EXTRAS=service,learner,postgres
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /app

# torch first, from the CPU index unless told otherwise, so pip never pulls a CUDA build the
# image cannot use (an empty TORCH keeps the base image's own).
RUN if [ -n "$TORCH" ]; then pip install "$TORCH" --index-url "$TORCH_INDEX"; fi

# The dependencies in a layer of their own, from pyproject.toml alone: a change to the code
# does not reinstall them.
COPY pyproject.toml docker/requirements.py ./
RUN python requirements.py pyproject.toml "$EXTRAS" > requirements.txt \
    && pip install -r requirements.txt

# The code, without its dependencies (installed above).
COPY README.md LICENSE ./
COPY robot_sac robot_sac
COPY services services
COPY sim sim
RUN pip install --no-deps . && rm -rf build *.egg-info

# Not root: the processes need nothing but their data directory.
RUN useradd --create-home --uid 10001 robot_sac && mkdir -p /data && chown robot_sac /data
USER robot_sac

ENV ROBOT_SAC_DATA_DIR=/data ROBOT_SAC_HOST=0.0.0.0 ROBOT_SAC_PORT=8000
VOLUME /data
EXPOSE 8000
# Ready once a policy is loaded. The slim image has no curl: Python asks.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=3)"]
ENTRYPOINT ["robot-sac"]
# Mount the robot's task file here (or give another command: `learn ...`, `serve --env ...`).
CMD ["serve", "--task", "/etc/robot_sac/task.json"]
