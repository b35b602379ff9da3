#!/usr/bin/env bash
# `make image`: build the Dockerfile's targets (default: operator trainer) as
# pretrain-operator/<target>:<version>, with docker where a Docker engine answers and with buildah
# otherwise (root, no daemon: chroot isolation; overlay storage, STORAGE_DRIVER=vfs where overlay
# is unavailable, at the price of a full copy per layer). buildah cannot pull here, so a
# missing base image (the Dockerfile's BASE_IMAGE) is made with debootstrap from Debian's
# mirror and tagged under that name. IMAGE_TAG overrides the tag (default: the version).
set -euo pipefail
cd "$(dirname "$0")/.."
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(operator trainer)
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' operator/src/pretrain_operator/__init__.py)
tag=${IMAGE_TAG:-$version}
base=$(sed -n 's/^ARG BASE_IMAGE=//p' Dockerfile)
suite=$(sed -n 's/^.*debian:\([a-z]*\)-.*$/\1/p' <<<"$base")
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# pip in the build trusts what this host trusts (PIP_CERT, else the system bundle): networks that
# intercept TLS have their CA there. Passed as a build secret, so no layer keeps it.
ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
secret=()
[ -s "$ca" ] && secret=(--secret "id=ca-certificates,src=$ca")

if [ -z "${BUILDAH:-}" ] && command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  for target in "${targets[@]}"; do
    docker build "${secret[@]}" --target "$target" --tag "pretrain-operator/$target:$tag" .
  done
  exit 0
fi

buildah=(buildah --storage-driver "${STORAGE_DRIVER:-overlay}")
if ! "${buildah[@]}" inspect --type image "$base" >/dev/null 2>&1; then
  rootfs=$(mktemp -d)
  trap 'rm -rf "$rootfs"' EXIT
  echo "making $base with debootstrap ($suite, minbase, from $mirror)" >&2
  debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >&2
  # As Debian's official images: no package lists or caches in the image.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log
  tar -C "$rootfs" -cf "$rootfs.tar" .
  trap 'rm -rf "$rootfs" "$rootfs.tar"' EXIT
  container=$("${buildah[@]}" from scratch)
  "${buildah[@]}" add --quiet "$container" "$rootfs.tar" /
  "${buildah[@]}" config --cmd bash --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$container"
  "${buildah[@]}" commit --rm --quiet "$container" "$base" >/dev/null
fi
for target in "${targets[@]}"; do
  image="pretrain-operator/$target:$tag"
  previous=$("${buildah[@]}" inspect --type image --format '{{.FromImageID}}' "$image" 2>/dev/null || true)
  "${buildah[@]}" build --isolation chroot --layers --pull=false "${secret[@]}" --target "$target" \
    --tag "$image" .
  # The image this build replaced is left untagged; the trainer's is 6 GB, so free it (a no-op
  # when the build reused it or another tag still names it).
  if [ -n "$previous" ] && [ "$previous" != "$("${buildah[@]}" inspect --type image --format '{{.FromImageID}}' "$image")" ]; then
    "${buildah[@]}" rmi "$previous" >/dev/null 2>&1 || true
  fi
done
