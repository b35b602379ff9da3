# syntax=docker/dockerfile:1
# Two images from one file: `--target operator` (kopf, pydantic; no torch) and `--target trainer`
# (torch; the node pods run `torchrun` and `python -m pretrain_trainer.rendezvous` from it).
# `make image` builds both (docker where it exists, buildah otherwise). The base is pinned; where
# no registry can be reached, hack/build-images.sh makes it with debootstrap under this name.
ARG BASE_IMAGE=docker.io/library/debian:bookworm-20250520-slim

# Debian's Python 3.11 and a non-root user; shared by both images.
FROM ${BASE_IMAGE} AS python
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 LANG=C.UTF-8
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 ca-certificates \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/log/apt /var/log/dpkg.log \
 && useradd --uid 1000 --user-group --create-home --shell /usr/sbin/nologin pretrain
WORKDIR /home/pretrain

# Virtual environments are built in a stage of their own, so neither pip nor the sources end up
# in the images.
FROM python AS venv
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/*
# CA: the build host's CA bundle, if it passes one (`--secret id=ca-certificates,src=...`, for a
# network that intercepts TLS); a secret is never stored in a layer.
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 CA=/run/secrets/ca-certificates

# Each image installs exactly what uv.lock says (versions and hashes): uv exports the image's
# share of the lock as a hash-pinned requirements file, which pip installs with --require-hashes.
FROM venv AS lock
COPY hack/uv.txt /src/hack/uv.txt
COPY pyproject.toml uv.lock /src/
COPY operator/pyproject.toml /src/operator/
COPY trainer/pyproject.toml /src/trainer/
RUN --mount=type=secret,id=ca-certificates \
    if [ -s "$CA" ]; then export PIP_CERT="$CA"; fi \
 && python3 -m venv /opt/uv \
 && /opt/uv/bin/pip install --quiet --require-hashes -r /src/hack/uv.txt \
 && cd /src \
 && /opt/uv/bin/uv export --quiet --frozen --no-default-groups --no-emit-workspace \
      --package pretrain-operator --extra controller -o /lock/operator.txt \
 && /opt/uv/bin/uv export --quiet --frozen --no-default-groups --no-emit-workspace \
      --package pretrain-trainer --extra s3 --extra gcs -o /lock/trainer.txt

FROM venv AS operator-build
COPY --from=lock /lock/operator.txt /lock/operator.txt
COPY operator/ /src/operator/
RUN --mount=type=secret,id=ca-certificates \
    if [ -s "$CA" ]; then export PIP_CERT="$CA"; fi \
 && python3 -m venv /opt/pretrain \
 && /opt/pretrain/bin/pip install --quiet --require-hashes -r /lock/operator.txt \
 && /opt/pretrain/bin/pip install --quiet --no-deps /src/operator \
 && /opt/pretrain/bin/pip uninstall --quiet --yes pip setuptools

FROM python AS operator
COPY --from=operator-build /opt/pretrain /opt/pretrain
ENV PATH=/opt/pretrain/bin:$PATH
USER 1000:1000
ENTRYPOINT ["pretrain-operator"]

# The trainer's (empty) environment, in a stage that no source change touches.
FROM venv AS trainer-venv
RUN python3 -m venv /opt/pretrain

FROM trainer-venv AS trainer-wheels
COPY operator/ /src/operator/
COPY trainer/ /src/trainer/
RUN --mount=type=secret,id=ca-certificates \
    if [ -s "$CA" ]; then export PIP_CERT="$CA"; fi \
 && /opt/pretrain/bin/pip wheel --quiet --no-deps --wheel-dir /wheels /src/operator /src/trainer

# torch with its CUDA libraries is 6 GB, so it is installed in the final stage itself rather than
# copied from a build stage (a copy would double the disk a build needs), and in a layer of its
# own that depends on the lock alone: a change of our code rebuilds, and a node re-imports, only
# the thin layer of our wheels above it.
FROM python AS trainer
COPY --from=trainer-venv /opt/pretrain /opt/pretrain
COPY --from=lock /lock/trainer.txt /opt/pretrain/requirements.txt
RUN --mount=type=secret,id=ca-certificates \
    if [ -s /run/secrets/ca-certificates ]; then export PIP_CERT=/run/secrets/ca-certificates; fi \
 && export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
 && /opt/pretrain/bin/pip install --quiet --require-hashes -r /opt/pretrain/requirements.txt
# Copied, not bind-mounted: a copy's digest is part of the layer cache's key, so new code is
# never served from a stale layer.
COPY --from=trainer-wheels /wheels /opt/pretrain/wheels
RUN PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    /opt/pretrain/bin/pip install --quiet --no-deps /opt/pretrain/wheels/*.whl \
 && /opt/pretrain/bin/pip uninstall --quiet --yes pip
ENV PATH=/opt/pretrain/bin:$PATH
USER 1000:1000
ENTRYPOINT ["pretrain"]
