#!/usr/bin/env bash
# Build the service image (web, worker, beat; see Dockerfile) on the local engine,
# FROM the sandboxes' base image setting, so no registry is needed:
#   scripts/build-service-image.sh [TAG]        (default isol8-service:latest)
# The base image (ISOL8_BASE_IMAGE, default isol8-base:bookworm) is made first when
# missing, as for the sandboxes (debootstrap). This machine's local CA certificates
# go into the image (deploy/ca/), for networks behind an inspecting proxy.
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-isol8-service:latest}
base=${ISOL8_BASE_IMAGE:-isol8-base:bookworm}
if ! docker image inspect "$base" >/dev/null 2>&1; then
  .venv/bin/python manage.py build_images --base-only
fi
find deploy/ca -name '*.crt' -delete
cp /usr/local/share/ca-certificates/*.crt deploy/ca/ 2>/dev/null || true
docker build -q --build-arg ISOL8_BASE_IMAGE="$base" --label isol8.managed=true --label isol8.image=service \
  -t "$tag" . >/dev/null
echo "==> built $tag from $base"
