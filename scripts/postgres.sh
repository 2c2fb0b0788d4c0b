#!/usr/bin/env bash
# PostgreSQL for the test suite (issue 19), from the distribution's packages, idempotently:
#   - installs `postgresql` when missing (as root)
#   - starts the distribution's cluster (Debian: `pg_ctlcluster <version> main`) when it is down;
#     it listens on loopback only (Debian's default)
#   - makes a login role `isol8_test_<checkout>` (one per checkout, so two checkouts' test runs
#     never change each other's password; password in var/postgres.password, made once) that may
#     create databases: pytest-django creates and drops its own test database
# Writes the server's URL without a database name to var/postgres.url (tests/testenv.py adds one
# per test run). Used by `make test-stack` (DB=postgres or both).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '==> %s\n' "$*" >&2; }
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to run: $*" >&2; exit 1; fi
}

if ! command -v pg_lsclusters >/dev/null; then
  say "installing postgresql"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
# The newest cluster the package made (Debian: one, "main").
read -r VERSION CLUSTER PORT STATUS _ < <(pg_lsclusters --no-header | sort -k1,1n | tail -n 1)
if [ -z "${VERSION:-}" ]; then
  say "creating a postgresql cluster"
  VERSION=$(ls /usr/lib/postgresql | sort -n | tail -n 1)
  as_root pg_createcluster "$VERSION" main >/dev/null
  read -r VERSION CLUSTER PORT STATUS _ < <(pg_lsclusters --no-header | sort -k1,1n | tail -n 1)
fi
if [ "$STATUS" != online ]; then
  say "starting postgresql $VERSION/$CLUSTER on 127.0.0.1:$PORT"
  as_root pg_ctlcluster "$VERSION" "$CLUSTER" start
fi

umask 077
mkdir -p var
[ -s var/postgres.password ] || head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n' > var/postgres.password
PASSWORD=$(cat var/postgres.password)
ROLE="isol8_test_$(pwd | sha256sum | cut -c1-8)"
psql_root() { as_root runuser -u postgres -- psql -p "$PORT" -v ON_ERROR_STOP=1 -qtAX "$@"; }
for _ in $(seq 1 40); do psql_root -c "SELECT 1" >/dev/null 2>&1 && break; sleep 0.25; done
if [ "$(psql_root -c "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" = 1 ]; then
  psql_root -c "ALTER ROLE $ROLE WITH LOGIN CREATEDB PASSWORD '$PASSWORD'" >/dev/null
else
  say "creating the role $ROLE"
  psql_root -c "CREATE ROLE $ROLE WITH LOGIN CREATEDB PASSWORD '$PASSWORD'" >/dev/null
fi
echo "postgres://$ROLE:$PASSWORD@127.0.0.1:$PORT" > var/postgres.url
say "postgresql $VERSION ready for the tests on 127.0.0.1:$PORT (role $ROLE)"
