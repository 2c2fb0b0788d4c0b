#!/usr/bin/env bash
# Installs and starts what isol8 needs on a Debian/Ubuntu machine, idempotently:
#   - Docker engine, Redis and debootstrap from the distribution (when missing, as root)
#   - dockerd and two redis-servers (main and events), started in the background when not answering
#   - a Python venv in .venv with the pinned requirements (+ dev ones with --dev)
#   - the database schema and the sandbox images (rebuilt only when changed)
# Used by `make run`, `make test`, `make test-fast` and .ci/run.
#   --dev        also the test and lint dependencies (and Chromium for the browser tests)
#   --no-docker  only what the fast test layers need: Redis and the venv (no Docker, no images)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DEV=0
DOCKER=1
for arg in "$@"; do
  case $arg in
    --dev) DEV=1 ;;
    --no-docker) DOCKER=0 ;;
    *) echo "usage: $0 [--dev] [--no-docker]" >&2; exit 2 ;;
  esac
done
LOG_DIR="$ROOT/var/log"
mkdir -p -m 700 "$ROOT/var"
mkdir -p "$LOG_DIR"
say() { printf '==> %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to run: $*" >&2; exit 1; fi
}

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ $DOCKER = 1 ]; then
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  # The second Docker engine of the multi-host tests lives in a network namespace (ip netns).
  [ $DEV = 1 ] && ! command -v ip >/dev/null && missing+=(iproute2)
  # The browser tests drive the distribution's Chromium (Playwright never downloads one).
  [ $DEV = 1 ] && ! command -v chromium >/dev/null && missing+=(chromium)
fi
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# /usr/bin/docker is Debian's client; a newer one earlier on PATH works too.
if [ $DOCKER = 1 ] && ! docker info >/dev/null 2>&1; then
  say "starting dockerd (log: var/log/dockerd.log)"
  as_root sh -c "setsid nohup dockerd >'$LOG_DIR/dockerd.log' 2>&1 &"
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start; see var/log/dockerd.log" >&2; exit 1; }
fi

# Two Redis servers on loopback, password-protected (var/redis.password, made
# once): the main one (broker, quotas, results; append-only file, never evicts)
# and the events one (stream events only; a memory limit, least recently used
# keys evicted first). See README "Redis".
umask 077
mkdir -p var
chmod 700 var
[ -s var/redis.password ] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > var/redis.password
REDIS_PASSWORD=$(cat var/redis.password)
start_redis() {  # name port settings...
  local name=$1 port=$2; shift 2
  # Ours: it answers with the password and refuses without it.
  if REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli -p "$port" ping 2>/dev/null | grep -q PONG \
     && ! redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; then return; fi
  # Ours but without the current password (an older bootstrap started it): replace it.
  local pidfile="var/redis-$name.pid"
  [ "$name" = main ] && [ ! -f "$pidfile" ] && [ -f var/redis.pid ] && pidfile=var/redis.pid
  local pid
  pid=$(cat "$pidfile" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    say "restarting redis-server $name with a password"
    kill "$pid"
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  elif redis-cli -p "$port" ping >/dev/null 2>&1; then
    echo "something else answers on 127.0.0.1:$port without our password; stop it or set the ports" >&2; exit 1
  fi
  mkdir -p "var/redis-$name"
  {
    echo "bind 127.0.0.1"; echo "port $port"; echo "protected-mode yes"
    echo "requirepass $REDIS_PASSWORD"; echo "dir $ROOT/var/redis-$name"
    echo "daemonize yes"; echo "pidfile $ROOT/var/redis-$name.pid"; echo "logfile $LOG_DIR/redis-$name.log"
    echo 'save ""'
    printf '%s\n' "$@"
  } > "var/redis-$name.conf"
  say "starting redis-server $name on 127.0.0.1:$port"
  redis-server "var/redis-$name.conf"
  for _ in $(seq 1 40); do
    REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && return; sleep 0.25
  done
  echo "redis-server $name did not start; see $LOG_DIR/redis-$name.log" >&2; exit 1
}
start_redis main "${REDIS_PORT:-6379}" "appendonly yes" "appendfsync everysec" \
  "maxmemory ${ISOL8_REDIS_MAXMEMORY:-1gb}" "maxmemory-policy noeviction"
start_redis events "${ISOL8_EVENTS_REDIS_PORT:-6380}" "appendonly no" \
  "maxmemory ${ISOL8_EVENTS_REDIS_MAXMEMORY:-512mb}" "maxmemory-policy allkeys-lru"
umask 022

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

[ $DOCKER = 1 ] || exit 0
say "migrating the database"
.venv/bin/python manage.py migrate --noinput -v 0
say "collecting static files (admin styles)"
.venv/bin/python manage.py collectstatic --noinput -v 0
say "building sandbox images (only what changed)"
.venv/bin/python manage.py build_images
