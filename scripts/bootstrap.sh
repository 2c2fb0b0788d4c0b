#!/usr/bin/env bash
# Installs and starts what isol8 needs on a Debian/Ubuntu machine, idempotently:
#   - Docker engine, Redis and debootstrap from the distribution (when missing, as root)
#   - dockerd and redis-server, started in the background when not answering
#   - a Python venv in .venv with the pinned requirements (+ dev ones with --dev)
#   - the database schema and the sandbox images (rebuilt only when changed)
# Used by `make run`, `make test` and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DEV=0
[ "${1:-}" = "--dev" ] && DEV=1
LOG_DIR="$ROOT/var/log"
mkdir -p "$LOG_DIR"
say() { printf '==> %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to run: $*" >&2; exit 1; fi
}

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v debootstrap >/dev/null || missing+=(debootstrap)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
# The browser tests drive the distribution's Chromium (Playwright never downloads one).
[ $DEV = 1 ] && ! command -v chromium >/dev/null && missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# /usr/bin/docker is Debian's client; a newer one earlier on PATH works too.
if ! docker info >/dev/null 2>&1; then
  say "starting dockerd (log: var/log/dockerd.log)"
  as_root sh -c "setsid nohup dockerd >'$LOG_DIR/dockerd.log' 2>&1 &"
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start; see var/log/dockerd.log" >&2; exit 1; }
fi

REDIS_PORT=${REDIS_PORT:-6379}
if ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  say "starting redis-server on 127.0.0.1:$REDIS_PORT"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize yes --logfile "$LOG_DIR/redis.log" --pidfile "$ROOT/var/redis.pid"
  for _ in $(seq 1 40); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.25; done
fi

if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  python3 -m venv .venv
fi
REQ=requirements.txt
[ $DEV = 1 ] && REQ=requirements-dev.txt
STAMP=".venv/.installed-$(sha256sum requirements.txt requirements-dev.txt | sha256sum | cut -c1-12)-$DEV"
if [ ! -f "$STAMP" ]; then
  say "installing Python dependencies ($REQ)"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r "$REQ"
  touch "$STAMP"
fi

say "migrating the database"
.venv/bin/python manage.py migrate --noinput -v 0
say "collecting static files (admin styles)"
.venv/bin/python manage.py collectstatic --noinput -v 0
say "building sandbox images (only what changed)"
.venv/bin/python manage.py build_images
