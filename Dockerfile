# robot_sac on a CPU image. GPU hosts: start from a CUDA PyTorch image and skip the torch line.
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /app
# torch first, from the CPU index, so the image does not carry a CUDA build it cannot use.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md LICENSE ./
COPY robot_sac robot_sac
COPY services services
COPY sim sim
RUN pip install ".[service,learner,sim,postgres]"
ENV ROBOT_SAC_DATA_DIR=/data
VOLUME /data
ENTRYPOINT ["robot-sac"]
CMD ["--help"]
