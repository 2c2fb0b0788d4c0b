#!/usr/bin/env bash
# A second, independent Docker engine on this machine, for the multi-host tests
# and the two-host recipe (README "Several Docker hosts"):
#
#   scripts/docker-engine.sh start NAME [IMAGE...]   start engine NAME, copy the images to it
#   scripts/docker-engine.sh stop NAME               stop it (its containers stop with it)
#   scripts/docker-engine.sh kill NAME               kill it at once (a host that dies)
#   scripts/docker-engine.sh socket NAME             print its DOCKER_HOST
#
# Engine NAME is a dockerd of its own: its own data root (/var/lib/isol8-docker-NAME),
# exec root and containerd (/run/isol8-docker-NAME), socket
# (/run/isol8-docker-NAME.sock), cgroup parent, and a network namespace of its own
# (isol8-NAME: its bridge, iptables rules and addresses are not the first engine's;
# only loopback is inside, so its containers reach nothing outside). Images are
# copied from the first engine with docker save | docker load (no registry
# needed); by default the project's python and bash sandbox images. Root only.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
action=${1:-}
name=${2:-}
[[ "$name" =~ ^[a-z0-9]{1,12}$ ]] || { echo "usage: $0 start|stop|kill|socket NAME [IMAGE...]" >&2; exit 2; }
shift 2
netns=isol8-$name
data=/var/lib/isol8-docker-$name
exec_root=/run/isol8-docker-$name
sock=/run/isol8-docker-$name.sock
pidfile=/run/isol8-docker-$name.pid
log=$ROOT/var/log/dockerd-$name.log
export DOCKER_HOST=unix://$sock

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }
answers() { docker info >/dev/null 2>&1; }

start() {
  if ! answers; then
    mkdir -p "$ROOT/var/log" "$data" "$exec_root"
    ip netns list | grep -qw "$netns" || ip netns add "$netns"
    ip netns exec "$netns" ip link set lo up
    # nsenter, not `ip netns exec`: that one also remounts /sys, which hides the
    # cgroup mounts dockerd needs. setsid: the engine outlives this script.
    nsenter --net="/run/netns/$netns" setsid nohup dockerd \
      --data-root "$data" --exec-root "$exec_root" --host "$DOCKER_HOST" --pidfile "$pidfile" \
      --cgroup-parent "isol8-docker-$name" --containerd-namespace "isol8-$name" \
      --containerd-plugins-namespace "isol8-$name-plugins" \
      >"$log" 2>&1 </dev/null &
    for _ in $(seq 1 120); do answers && break; sleep 0.5; done
    answers || { echo "engine $name did not start; see $log" >&2; exit 1; }
  fi
  local images=("$@")
  if [ ${#images[@]} = 0 ]; then
    mapfile -t images < <(DOCKER_HOST= docker images --filter label=isol8.managed=true \
      --format '{{.Repository}}:{{.Tag}}' | grep -E '^isol8-sandbox-(python|bash):')
  fi
  local wanted=()
  for image in "${images[@]}"; do
    local here there
    here=$(DOCKER_HOST= docker image inspect -f '{{.Id}}' "$image")
    there=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
    [ "$here" = "$there" ] || wanted+=("$image")
  done
  if [ ${#wanted[@]} -gt 0 ]; then
    echo "==> copying ${wanted[*]} to engine $name"
    DOCKER_HOST= docker save "${wanted[@]}" | docker load -q >/dev/null
  fi
  echo "==> engine $name: DOCKER_HOST=$DOCKER_HOST"
}

stop() {  # signal
  running || return 0
  local pid
  pid=$(cat "$pidfile")
  kill "-$1" "$pid"
  for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if [ "$1" = KILL ]; then
    # A dead host: its containerd and the containers' shims die with it.
    pkill -KILL -f "containerd --config $exec_root/containerd/containerd.toml" || true
    pkill -KILL -f "containerd-shim-runc-v2 -namespace isol8-$name " || true
  fi
  rm -f "$pidfile"
}

case $action in
  start) start "$@" ;;
  stop) stop TERM ;;
  kill) stop KILL ;;
  socket) echo "$DOCKER_HOST" ;;
  *) echo "usage: $0 start|stop|kill|socket NAME [IMAGE...]" >&2; exit 2 ;;
esac
