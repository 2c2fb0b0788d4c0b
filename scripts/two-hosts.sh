#!/usr/bin/env bash
# The two-host recipe on one machine (README "Several Docker hosts"):
#
#   scripts/two-hosts.sh up     web + worker + beat on this machine's engine (host A, `manage.py
#                               serve`), and an extra worker on a second engine (host B,
#                               scripts/docker-engine.sh), sharing one Redis and one database
#   scripts/two-hosts.sh down   stop both (by the PIDs it started) and the second engine
#
# On real machines host B is another machine: run its engine there, point its worker at
# the same REDIS_URL, CELERY_BROKER_URL, ISOL8_EVENTS_REDIS_URL and DATABASE_URL
# (PostgreSQL), and start it with the worker command below. Settings come from the
# environment as everywhere (PORT, ISOL8_API_KEY, DATABASE_URL, ...); ISOL8_WORKER_HOST
# names host A (default: this machine's name) and HOST_B host B (default: A's name + -b).
# Run scripts/bootstrap.sh first (make run does).
set -euo pipefail
cd "$(dirname "$0")/.."
state=${ISOL8_DATA_DIR:-var}/two-hosts
mkdir -p "$state" var/log
host_a=${ISOL8_WORKER_HOST:-$(hostname)}
host_b=${HOST_B:-$host_a-b}
engine=${ENGINE:-b}
port=${PORT:-3000}
py=.venv/bin/python

stop_pid() {  # file
  local pid
  pid=$(cat "$1" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$1"
}

case ${1:-} in
  up)
    [ -n "${ISOL8_API_KEY:-}" ] || { [ -s var/master_key ] && ISOL8_API_KEY=$(cat var/master_key); } || true
    [ -n "${ISOL8_API_KEY:-}" ] || { echo "set ISOL8_API_KEY (or run make run once for var/master_key)" >&2; exit 2; }
    export ISOL8_API_KEY
    scripts/docker-engine.sh start "$engine"
    ISOL8_WORKER_HOST=$host_a setsid $py manage.py serve --port "$port" >>"$state/serve.log" 2>&1 </dev/null &
    echo $! > "$state/serve.pid"
    # Ready when the operator's /health lists the given hosts alive with their engines.
    ready() {
      curl -sS -H "Authorization: Bearer $ISOL8_API_KEY" "http://127.0.0.1:$port/health" 2>/dev/null \
        | $py -c "import json,sys
try: h=json.load(sys.stdin).get('hosts',{})
except ValueError: sys.exit(1)
sys.exit(0 if all(h.get(n,{}).get('state')=='alive' and h[n]['docker']=='ok' for n in sys.argv[1:]) else 1)" "$@"
    }
    wait_ready() {
      for _ in $(seq 1 240); do ready "$@" && return 0; sleep 0.5; done
      echo "not ready in 120 s; see $state/serve.log and $state/worker-b.log" >&2
      exit 1
    }
    wait_ready "$host_a"  # serve has migrated the database by then: host B's worker may start
    queues="${ISOL8_RUN_QUEUE:-isol8.run},isol8.host.$host_b,${ISOL8_WEBHOOK_QUEUE:-isol8.webhooks}"
    DOCKER_HOST=$(scripts/docker-engine.sh socket "$engine") ISOL8_WORKER_HOST=$host_b setsid \
      $py -m celery -A isol8_site worker -P threads -c "${ISOL8_WORKER_CONCURRENCY:-16}" -Q "$queues" \
      -n "isol8@$host_b" -l WARNING --without-gossip --without-mingle >>"$state/worker-b.log" 2>&1 </dev/null &
    echo $! > "$state/worker-b.pid"
    wait_ready "$host_a" "$host_b"
    echo "==> up on http://127.0.0.1:$port: hosts $host_a (this engine) and $host_b (engine $engine)"
    exit 0
    ;;
  down)
    stop_pid "$state/worker-b.pid"
    stop_pid "$state/serve.pid"
    scripts/docker-engine.sh stop "$engine"
    echo "==> down"
    ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
