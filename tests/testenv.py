"""Test environment, set before Django reads its settings (loaded with ``-p``).

Tests get their own Redis database, data directory, run queue and worker host
name, so a running development server on the same machine is not disturbed and
every container the tests start can be found (and must be gone) by label.
"""

import os
import tempfile

_run_id = f"test-{os.getpid()}"
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("ISOL8_DATA_DIR", tempfile.mkdtemp(prefix="isol8-test-"))
os.environ.setdefault("ISOL8_WORKER_HOST", _run_id)
os.environ.setdefault("ISOL8_RUN_QUEUE", f"isol8.run.{_run_id}")
os.environ.setdefault("ISOL8_API_KEY", "test-master-key")
os.environ.setdefault("ISOL8_HEARTBEAT_SECONDS", "1")
os.environ.setdefault("ISOL8_REAPER_SECONDS", "2")
os.environ.setdefault("ISOL8_POOL_SIZE", "1")
os.environ.setdefault("ISOL8_QUEUE_TIMEOUT", "20")
os.environ.setdefault("ISOL8_ORPHAN_MIN_AGE", "3")
