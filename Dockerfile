# syntax=docker/dockerfile:1
# Two images from one file: `--target operator` (kopf, pydantic; no torch) and `--target trainer`.
# The entry points arrive with the operator and trainer issues; `make image` with the shipping one.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --uid 1000 --create-home --shell /usr/sbin/nologin pretrain
WORKDIR /home/pretrain

FROM base AS operator
COPY operator/ /src/operator/
RUN pip install /src/operator && rm -rf /src
USER 1000:1000

FROM base AS trainer
COPY operator/ /src/operator/
COPY trainer/ /src/trainer/
RUN pip install /src/operator /src/trainer && rm -rf /src
USER 1000:1000
