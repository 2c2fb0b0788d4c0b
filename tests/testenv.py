"""Test environment, set before Django reads its settings (loaded with ``-p``).

Tests get their own Redis databases, data directory, run queue and worker host
name, so a running development server on the same machine is not disturbed and
every container the tests start can be found (and must be gone) by label.
"""

import os
import tempfile
from pathlib import Path

_run_id = f"test-{os.getpid()}"
_password_file = Path(__file__).resolve().parent.parent / "var" / "redis.password"
_auth = f":{_password_file.read_text().strip()}@" if _password_file.exists() else ""
# ISOL8_TEST_DB=postgres: the suite runs on the PostgreSQL that scripts/postgres.sh
# starts (the distribution's), in a test database of this run's own.
_pg_url_file = _password_file.with_name("postgres.url")
if os.environ.get("ISOL8_TEST_DB") == "postgres" and "DATABASE_URL" not in os.environ:
    if not _pg_url_file.exists():
        raise SystemExit("ISOL8_TEST_DB=postgres: run scripts/postgres.sh first (make test-stack does)")
    os.environ["DATABASE_URL"] = f"{_pg_url_file.read_text().strip()}/isol8_{os.getpid()}"
os.environ.setdefault("REDIS_URL", f"redis://{_auth}127.0.0.1:6379/15")
os.environ.setdefault("ISOL8_EVENTS_REDIS_URL", f"redis://{_auth}127.0.0.1:6380/15")
os.environ.setdefault("ISOL8_DATA_DIR", tempfile.mkdtemp(prefix="isol8-test-"))
os.environ.setdefault("ISOL8_WORKER_HOST", _run_id)
os.environ.setdefault("ISOL8_RUN_QUEUE", f"isol8.run.{_run_id}")
os.environ.setdefault("ISOL8_API_KEY", "test-master-key-2f7c9a41e0b8d6")
os.environ.setdefault("ISOL8_HEARTBEAT_SECONDS", "1")
os.environ.setdefault("ISOL8_REAPER_SECONDS", "2")
os.environ.setdefault("ISOL8_HOST_LOST_SECONDS", "6")
os.environ.setdefault("ISOL8_POOL_SIZE", "1")
os.environ.setdefault("ISOL8_QUEUE_TIMEOUT", "20")
os.environ.setdefault("ISOL8_ORPHAN_MIN_AGE", "3")
# The suite sends many bad keys from loopback on purpose; the throttle has a test of its own.
os.environ.setdefault("ISOL8_AUTH_FAILURES_PER_MINUTE", "100000")
# Short deadlines, so the tests of what happens when they pass do not wait long.
os.environ.setdefault("ISOL8_FILE_OP_TIMEOUT", "5")
os.environ.setdefault("ISOL8_BODY_TIMEOUT", "3")
os.environ.setdefault("ISOL8_HEAD_TIMEOUT", "3")
os.environ.setdefault("ISOL8_METER_SECONDS", "2")
# Webhook tests post to a receiver on loopback, and watch retries without waiting long.
os.environ.setdefault("ISOL8_WEBHOOK_ALLOW_LOOPBACK", "true")
os.environ.setdefault("ISOL8_WEBHOOK_BACKOFF_SECONDS", "0.5")
