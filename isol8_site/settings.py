"""Django settings for isol8: one module, every knob from the environment.

Each setting says why it has its default. Secrets may also come from a file:
for ``X`` the variable ``X_FILE`` names a file whose content is used. The README
lists every variable.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
from pathlib import Path

import dj_database_url

from isol8_site.config import ConfigError, load_config
from sandbox.config import SandboxConfig
from sandbox.runtimes import RUNTIME_NAMES
from sandbox.spec import Limits

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name: str, default: str = "") -> str:
    """Read a setting from the environment, or from the file named by NAME_FILE."""
    file_name = os.environ.get(f"{name}_FILE")
    if file_name:
        return Path(file_name).read_text().strip()
    return os.environ.get(name, default)


def env_int(name: str, default: int) -> int:
    return int(env(name, str(default)))


def env_float(name: str, default: float) -> float:
    return float(env(name, str(default)))


def env_quota(name: str, default: int | None) -> int | None:
    """A quota: a positive integer, or ``none``/``unlimited`` (or empty) for no limit."""
    raw = env(name, "none" if default is None else str(default)).strip().lower()
    if raw in ("", "none", "unlimited"):
        return None
    value = int(raw)
    if value < 1:
        raise ValueError(f"{name}: a quota is a positive integer or 'none', got {raw!r}")
    return value


def env_ports(name: str, default: str) -> tuple[int, ...]:
    """A comma-separated list of TCP ports (1-65535), at least one."""
    raw = env(name, default)
    try:
        ports = tuple(int(p) for p in raw.split(",") if p.strip())
    except ValueError:
        raise ValueError(f"{name}: expected comma-separated port numbers, got {raw!r}") from None
    if not ports or not all(0 < p < 65536 for p in ports):
        raise ValueError(f"{name}: expected comma-separated port numbers (1-65535), got {raw!r}")
    return ports


def env_bool(name: str, default: bool) -> bool:
    return env(name, "1" if default else "0").lower() in ("1", "true", "yes", "on")


# Where the embedded defaults keep their state (SQLite database, generated secret).
DATA_DIR = Path(env("ISOL8_DATA_DIR", str(BASE_DIR / "var")))
# Only the service's own user may enter it: it holds the database, secrets and logs.
DATA_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
DATA_DIR.chmod(0o700)

# Prometheus metrics (isol8_site/metrics.py): every process of this host keeps
# its counters in files here, summed by GET /metrics. prometheus_client reads
# the variable when it is first imported, which is after the settings.
ISOL8_METRICS_DIR = env("ISOL8_METRICS_DIR", str(DATA_DIR / "metrics"))
Path(ISOL8_METRICS_DIR).mkdir(mode=0o700, parents=True, exist_ok=True)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = ISOL8_METRICS_DIR
# A bearer token a Prometheus server scrapes /metrics with (the master key works too).
ISOL8_METRICS_TOKEN = env("ISOL8_METRICS_TOKEN", "")


def _persistent_secret(name: str) -> str:
    """A random secret generated once and kept in DATA_DIR.

    Web and worker processes must agree on it (it peppers API key digests), and
    it must survive restarts, so a fresh random value per process will not do.
    """
    path = DATA_DIR / name
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return path.read_text().strip()


SECRET_KEY = env("DJANGO_SECRET_KEY") or _persistent_secret("secret_key")
# HMAC pepper of API key digests; a database dump alone then cannot be used to
# test guesses of keys. A secret of its own (not SECRET_KEY, which signs
# cookies and stream tokens). Changing it invalidates every tenant key.
ISOL8_KEY_PEPPER = env("ISOL8_KEY_PEPPER") or _persistent_secret("key_pepper")
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = [h for h in env("DJANGO_ALLOWED_HOSTS", "*").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in env("DJANGO_CSRF_TRUSTED_ORIGINS").split(",") if o]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    # The OpenAPI document generated from the views (GET /openapi.json) and the
    # docs page (GET /docs) with Swagger UI's files served from here, no CDN.
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_eventstream",
    "tenants",
    "executions",
    "sessions_app",
    "worker",
]

# Body limits are enforced before Django reads a body (isol8_site/bodyguard.py).
MIDDLEWARE = [
    # X-Request-Id and the JSON line of each request (isol8_site/logs.py).
    "isol8_site.logs.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Static files (the admin's CSS and JS) straight from the web process,
    # compressed and with content-hashed names cached for a year.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "isol8_site.urls"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

ASGI_APPLICATION = "isol8_site.asgi.application"
WSGI_APPLICATION = "isol8_site.wsgi.application"

# SQLite is the embedded default; DATABASE_URL (postgres://...) switches to PostgreSQL.
DATABASES = {
    "default": dj_database_url.parse(
        env("DATABASE_URL", f"sqlite:///{DATA_DIR / 'db.sqlite3'}"), conn_max_age=0
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web threads and the worker write concurrently: WAL lets readers go on
    # during a write, IMMEDIATE transactions take the write lock up front
    # (no deadlock on lock upgrade), and the timeout waits for it instead of
    # failing with "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA temp_store=MEMORY;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
    # A file, not memory: the test suite's web and worker processes share it.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test_db.sqlite3")}
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A pool per process (psycopg_pool): each concurrent request runs in a
    # thread of its own, so a burst of 300 WebSocket handshakes would open 300
    # connections and meet PostgreSQL's max_connections (100 by default) with
    # "too many clients". With the pool a burst waits for one of
    # ISOL8_DB_POOL_SIZE connections instead (up to ISOL8_DB_POOL_TIMEOUT s).
    # Size it so that (web processes + workers) x size stays under max_connections.
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # the pool keeps them; Django must not
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": env_int("ISOL8_DB_POOL_SIZE", 20),
        "timeout": env_float("ISOL8_DB_POOL_TIMEOUT", 30.0),
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "/static/"
# Collected by `collectstatic` (bootstrap does it) and served by WhiteNoise. Not
# under DATA_DIR: it is built from the code, like the images, not service state.
STATIC_ROOT = Path(env("ISOL8_STATIC_ROOT", str(BASE_DIR / "var" / "static")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# Redis: Celery broker, quota counters, result push and event storage.
def _local_redis(port: int) -> str:
    """The URL of a Redis that scripts/bootstrap.sh started, with its generated password."""
    password_file = Path(env("ISOL8_REDIS_PASSWORD_FILE", str(BASE_DIR / "var" / "redis.password")))
    password = password_file.read_text().strip() if password_file.exists() else ""
    auth = f":{password}@" if password else ""
    return f"redis://{auth}127.0.0.1:{port}/0"


REDIS_URL = env("REDIS_URL") or _local_redis(6379)

CELERY_BROKER_URL = env("CELERY_BROKER_URL", REDIS_URL)
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Acknowledge on receipt, never late: a task whose worker dies mid-run must not be
# redelivered, because user code must never run twice. The reaper fails such
# executions instead.
CELERY_TASK_ACKS_LATE = False
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
# Sending a run rides out a Redis restart of a few seconds instead of failing it.
CELERY_TASK_PUBLISH_RETRY = True
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 20, "interval_start": 0, "interval_step": 0.25, "interval_max": 1}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["tenants.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["tenants.authentication.IsTenant"],
    "DEFAULT_PARSER_CLASSES": ["isol8_site.parsers.JsonBodyParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "isol8_site.errors.exception_handler",
    # JSON routes answer JSON whatever Accept says; stream routes negotiate
    # text/event-stream themselves (isol8_site/negotiation.py).
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "isol8_site.negotiation.JsonOnlyNegotiation",
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

# GET /openapi.json and /docs (isol8_site/openapi.py). The document is built
# from the views' annotations; authentication is declared once (a bearer key)
# rather than derived from the authentication classes.
SPECTACULAR_SETTINGS = {
    "TITLE": "isol8",
    "DESCRIPTION": (
        "Run untrusted code (Python, Node.js, Bash, Bun, Deno) in hardened containers. Wire-compatible "
        "with the isol8 server's HTTP protocol. Every error is `{\"error\", \"code\"}` JSON. The "
        "WebSocket route `GET /execute/ws` is described in the README (OpenAPI has no words for it)."
    ),
    "OAS_VERSION": "3.0.3",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_AUTHENTICATION": [],
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "AUTHENTICATION_WHITELIST": [],
    "SECURITY": [{"bearerAuth": []}],
    "APPEND_COMPONENTS": {
        "securitySchemes": {
            "bearerAuth": {"type": "http", "scheme": "bearer", "description": "A tenant API key or the master key"}
        }
    },
    "ENUM_NAME_OVERRIDES": {"ExecutionStatus": "executions.models.Status"},
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "isol8_site.openapi.postprocess",
    ],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# Stream events live in a Redis of their own, with a memory limit and eviction
# (scripts/bootstrap.sh starts it), so that events can never evict broker
# messages or quota counters from the main Redis, which never evicts.
ISOL8_EVENTS_REDIS_URL = env("ISOL8_EVENTS_REDIS_URL") or _local_redis(6380)
# django-eventstream keeps events in that Redis (see executions/events.py) so a
# stream can start from an execution's first event and resume after a
# disconnect. Its own pub/sub (EVENTSTREAM_REDIS) is not used: the storage
# notifies web processes in the same round trip, and executions/events.py runs
# a listener that reconnects after a Redis restart.
EVENTSTREAM_STORAGE_CLASS = "executions.events.RedisEventStorage"
EVENTSTREAM_CHANNELMANAGER_CLASS = "executions.events.ExecutionChannelManager"

# ---------------------------------------------------------------- isol8 itself

try:
    ISOL8_CONFIG = load_config()
except ConfigError as exc:
    # Stop here with the message naming the key, rather than a traceback.
    sys.stderr.write(f"isol8: bad config: {exc}\n")
    raise SystemExit(2) from exc

# The operator's master key (isol8's `serve --key`): ISOL8_API_KEY, else the key
# `serve --generate-key` (`make run`) made once into DATA_DIR/master_key. Empty
# disables it. It must be long enough not to be guessed.
MASTER_KEY_FILE = DATA_DIR / "master_key"
MASTER_KEY_MIN_LENGTH = 24
ISOL8_API_KEY = env("ISOL8_API_KEY") or (MASTER_KEY_FILE.read_text().strip() if MASTER_KEY_FILE.exists() else "")
if ISOL8_API_KEY and (len(ISOL8_API_KEY) < MASTER_KEY_MIN_LENGTH or len(set(ISOL8_API_KEY)) < 8):
    sys.stderr.write(
        f"isol8: ISOL8_API_KEY is too weak: use at least {MASTER_KEY_MIN_LENGTH} characters, not a word "
        "(or leave it unset: `make run` generates one into var/master_key)\n"
    )
    raise SystemExit(2)
ISOL8_VERSION = "0.1.0"
SPECTACULAR_SETTINGS["VERSION"] = ISOL8_VERSION
# The built-in tenant that the master key executes under.
ISOL8_DEFAULT_TENANT = "default"

# The name this worker's containers are labelled with and the suffix of its own
# queue (sessions are pinned to the host that owns their container).
ISOL8_WORKER_HOST = env("ISOL8_WORKER_HOST", socket.gethostname())
# Queue of one-shot runs, consumed by every worker.
ISOL8_RUN_QUEUE = env("ISOL8_RUN_QUEUE", "isol8.run")

# Sandbox images: the base image a user with a registry can set to
# debian:bookworm-slim; the default is built locally with debootstrap.
ISOL8_BASE_IMAGE = env("ISOL8_BASE_IMAGE", "isol8-base:bookworm")
ISOL8_DEBIAN_MIRROR = env("ISOL8_DEBIAN_MIRROR", "http://deb.debian.org/debian")
ISOL8_IMAGE_PREFIX = env("ISOL8_IMAGE_PREFIX", "isol8-sandbox")
# CA certificates (*.crt) added to the images' trust store, for machines whose
# egress is a TLS-intercepting proxy; an empty or missing folder adds nothing.
ISOL8_EXTRA_CA_DIR = env("ISOL8_EXTRA_CA_DIR", "/usr/local/share/ca-certificates")
ISOL8_IMAGES_DIR = BASE_DIR / "images"
# Runtimes this server runs (each needs its image; see build_images).
ISOL8_RUNTIMES = [r for r in env("ISOL8_RUNTIMES", ",".join(RUNTIME_NAMES)).split(",") if r]
if unknown := sorted(set(ISOL8_RUNTIMES) - set(RUNTIME_NAMES)):
    sys.exit(f"ISOL8_RUNTIMES: unknown runtime(s) {', '.join(unknown)}; expected some of {', '.join(RUNTIME_NAMES)}")
# "launcher" runs code through the in-container launcher over the attached
# stdin/stdout; "exec" does one `docker exec` per run (the fallback path).
ISOL8_SANDBOX_MODE = env("ISOL8_SANDBOX_MODE", "launcher")
if ISOL8_SANDBOX_MODE not in ("launcher", "exec"):
    sys.exit(f"ISOL8_SANDBOX_MODE: expected launcher or exec, got {ISOL8_SANDBOX_MODE!r}")
# Python runs are forked from a python3 fork server the launcher keeps in each
# python sandbox, saving CPython's start-up per run; 0 starts python3 for every
# run. ISOL8_PYTHON_ZYGOTE is its old name, still read when the new one is unset.
ISOL8_PYTHON_FORK_SERVER = env_bool(
    "ISOL8_PYTHON_FORK_SERVER", env_bool("ISOL8_PYTHON_ZYGOTE", True)
)
# Warm containers kept started per runtime; isol8.config.json's poolSize wins.
ISOL8_POOL_SIZE = env_int("ISOL8_POOL_SIZE", ISOL8_CONFIG.pool_size)
# Used containers kept (reset) for reuse by the same tenant, per tenant and
# runtime, and how long they may stay idle.
ISOL8_TENANT_IDLE_MAX = env_int("ISOL8_TENANT_IDLE_MAX", 4)
ISOL8_TENANT_IDLE_SECONDS = env_int("ISOL8_TENANT_IDLE_SECONDS", 60)
# uvicorn processes `serve` runs: one Python process cannot use a second core,
# and /execute's CPU is mostly Django, DRF and Celery's publish.
ISOL8_WEB_WORKERS = env_int("ISOL8_WEB_WORKERS", min(4, os.cpu_count() or 1))
# Seconds a worker thread keeps its database connection (web requests never do:
# each ASGI request runs in a thread of its own).
ISOL8_WORKER_DB_CONN_MAX_AGE = env_int("ISOL8_WORKER_DB_CONN_MAX_AGE", 300)
# GIL switch interval of worker processes (seconds); see Worker.start().
ISOL8_WORKER_SWITCH_INTERVAL = env_float("ISOL8_WORKER_SWITCH_INTERVAL", 0.0005)
# Threads in the Celery worker: runs in flight at once on this host.
ISOL8_WORKER_CONCURRENCY = env_int("ISOL8_WORKER_CONCURRENCY", max(4, ISOL8_CONFIG.max_concurrent))

# Limits (api.md "Defaults"): request defaults come from the config file.
ISOL8_DEFAULTS = ISOL8_CONFIG.defaults
ISOL8_NOFILE = env_int("ISOL8_NOFILE", 1024)
ISOL8_FSIZE = env_int("ISOL8_FSIZE", 128 * 1024 * 1024)
ISOL8_SHM_SIZE = env_int("ISOL8_SHM_SIZE", 16 * 1024 * 1024)
ISOL8_INODES = env_int("ISOL8_INODES", 16384)
# POSIX message queue bytes per code user (RLIMIT_MSGQUEUE; Linux's default is 800 KiB).
ISOL8_MSGQUEUE = env_int("ISOL8_MSGQUEUE", 256 * 1024)
# Each sandbox's code runs under a host uid of its own, picked in this range,
# which must hold no account of the Docker host (checked at worker start).
ISOL8_SANDBOX_UID_BASE = env_int("ISOL8_SANDBOX_UID_BASE", 2_000_000)
ISOL8_SANDBOX_UID_COUNT = env_int("ISOL8_SANDBOX_UID_COUNT", 65_536)
# Request bodies (api.md): 2 MiB on /execute, 16 MiB on /file (10 MiB decoded).
ISOL8_EXECUTE_BODY_MAX = env_int("ISOL8_EXECUTE_BODY_MAX", 2 * 1024 * 1024)
ISOL8_FILE_BODY_MAX = env_int("ISOL8_FILE_BODY_MAX", 16 * 1024 * 1024)
ISOL8_FILE_MAX_BYTES = env_int("ISOL8_FILE_MAX_BYTES", 10 * 1024 * 1024)
# Secrets per request and bytes per secret (their masking is linear in the output
# with these bounds: 32 secrets of 4 KiB over 512 KiB of output cost ~80 ms of CPU).
ISOL8_MAX_SECRETS = env_int("ISOL8_MAX_SECRETS", 32)
ISOL8_MAX_SECRET_BYTES = env_int("ISOL8_MAX_SECRET_BYTES", 4096)
# Seconds a session's launcher has to answer a file operation before the
# session is declared dead (its launcher never blocks on a file).
ISOL8_FILE_OP_TIMEOUT = env_float("ISOL8_FILE_OP_TIMEOUT", 30.0)
DATA_UPLOAD_MAX_MEMORY_SIZE = ISOL8_FILE_BODY_MAX
# Bodies are bounded and kept in memory: never spooled to the host's /tmp.
FILE_UPLOAD_MAX_MEMORY_SIZE = ISOL8_FILE_BODY_MAX
# All of one run's outputPaths together (each file is also capped at ISOL8_FILE_MAX_BYTES).
ISOL8_OUTPUT_FILES_MAX = env_int("ISOL8_OUTPUT_FILES_MAX", 10 * 1024 * 1024)
# A stateful cell's displays (plots, HTML) together; past it they are dropped (displaysDropped).
ISOL8_DISPLAY_MAX_BYTES = env_int("ISOL8_DISPLAY_MAX_BYTES", 16 * 1024 * 1024)
# Build the python-science image (the python image plus numpy, pandas, matplotlib)
# that stateful python sessions run in; 0 keeps only the slim images.
ISOL8_SCIENCE_IMAGE = env_bool("ISOL8_SCIENCE_IMAGE", True)
# The history keeps at most this much raw output per stream and execution.
ISOL8_HISTORY_MAX_OUTPUT = env_int("ISOL8_HISTORY_MAX_OUTPUT", 1024 * 1024)
# How long a queued run may wait for a worker before it fails with 503.
ISOL8_QUEUE_TIMEOUT = env_float("ISOL8_QUEUE_TIMEOUT", 30.0)

# Agents and pipelines (README "Batches, idempotency keys and webhooks").
# POST /execute/batch takes at most this many requests (each one an execution).
ISOL8_BATCH_MAX = env_int("ISOL8_BATCH_MAX", 50)
# How long an Idempotency-Key answers with its first execution (a day, as Stripe's).
ISOL8_IDEMPOTENCY_SECONDS = env_float("ISOL8_IDEMPOTENCY_SECONDS", 86400.0)
# Webhook deliveries run in the workers, from a queue of their own (never on a run's path).
ISOL8_WEBHOOK_QUEUE = env("ISOL8_WEBHOOK_QUEUE", "isol8.webhooks")
# A failed delivery is tried again after BACKOFF, 2*BACKOFF, 4*BACKOFF ... seconds,
# at most MAX_ATTEMPTS times and never later than RETRY_SECONDS after the run ended.
ISOL8_WEBHOOK_BACKOFF_SECONDS = env_float("ISOL8_WEBHOOK_BACKOFF_SECONDS", 5.0)
ISOL8_WEBHOOK_MAX_ATTEMPTS = env_int("ISOL8_WEBHOOK_MAX_ATTEMPTS", 8)
ISOL8_WEBHOOK_RETRY_SECONDS = env_float("ISOL8_WEBHOOK_RETRY_SECONDS", 3600.0)
ISOL8_WEBHOOK_TIMEOUT = env_float("ISOL8_WEBHOOK_TIMEOUT", 10.0)
# Callbacks to loopback addresses (a receiver on this machine, for tests and
# development). Off: a callback may reach only public addresses.
ISOL8_WEBHOOK_ALLOW_LOOPBACK = env_bool("ISOL8_WEBHOOK_ALLOW_LOOPBACK", False)
# Package installs (installPackages): the registries the egress proxy lets
# installers reach, where installed package sets are cached (per tenant and set),
# and how long one install may take.
ISOL8_EGRESS_ALLOW = [
    h for h in env(
        "ISOL8_EGRESS_ALLOW", "pypi.org,files.pythonhosted.org,registry.npmjs.org,jsr.io,npm.jsr.io"
    ).split(",") if h
]
ISOL8_PACKAGE_CACHE = Path(env("ISOL8_PACKAGE_CACHE", str(DATA_DIR / "packages")))
# network "filtered": each filtered sandbox's egress socket lives in a directory
# under this one, bind-mounted into the sandbox (the same path for the worker
# and the Docker engine; short: a Unix socket path has at most 107 bytes).
ISOL8_EGRESS_DIR = Path(env("ISOL8_EGRESS_DIR", str(DATA_DIR / "egress")))
# network "filtered": the ports a filtered run may connect to (80 and 443 by
# default: web traffic, not mail relays or databases), and the caps new tenants
# get (each tenant's own are edited in the admin). Per run: connections let
# through, bytes up + down, and bytes per second over all its connections (0 =
# unlimited: the byte cap already bounds what a run can move); per tenant:
# connections open at once on one host's gateway, so one tenant's runs cannot
# hold every socket of it.
ISOL8_EGRESS_PORTS = env_ports("ISOL8_EGRESS_PORTS", "80,443")
ISOL8_EGRESS_RUN_CONNECTIONS = env_int("ISOL8_EGRESS_RUN_CONNECTIONS", 64)
ISOL8_EGRESS_RUN_BYTES = env_int("ISOL8_EGRESS_RUN_BYTES", 256 * 1024 * 1024)
ISOL8_EGRESS_RUN_BPS = env_int("ISOL8_EGRESS_RUN_BPS", 0)
ISOL8_EGRESS_TENANT_CONNECTIONS = env_int("ISOL8_EGRESS_TENANT_CONNECTIONS", 32)
# CIDRs the egress gateway may connect to although they are private (say, an
# internal package mirror); this host's own addresses stay unreachable.
ISOL8_EGRESS_PERMIT_NETWORKS = [n.strip() for n in env("ISOL8_EGRESS_PERMIT_NETWORKS", "").split(",") if n.strip()]
ISOL8_INSTALL_TIMEOUT_MS = env_int("ISOL8_INSTALL_TIMEOUT_MS", 300_000)
ISOL8_MAX_PACKAGES = env_int("ISOL8_MAX_PACKAGES", 50)
# Requests waiting for a global slot (maxConcurrent) beyond this many get 503 at once.
ISOL8_MAX_QUEUE_DEPTH = env_int("ISOL8_MAX_QUEUE_DEPTH", 100)
# Extra time past the run's own timeout before the service gives up on a worker.
ISOL8_RESULT_GRACE = env_float("ISOL8_RESULT_GRACE", 15.0)
# Workers refresh a heartbeat this often; one silent for 3 beats counts as dead.
ISOL8_HEARTBEAT_SECONDS = env_float("ISOL8_HEARTBEAT_SECONDS", 5.0)
# A worker host whose worker or Docker engine has not answered for this long is
# lost: its sessions are marked dead (before that, their calls are 503: it may be restarting).
ISOL8_HOST_LOST_SECONDS = env_float("ISOL8_HOST_LOST_SECONDS", 60.0)
# Live sandboxes (sessions + pool) a worker host takes before placement sends new sessions elsewhere.
ISOL8_HOST_CAPACITY = env_int("ISOL8_HOST_CAPACITY", 200)
# How often the reaper fails runs of dead workers and removes orphaned containers.
ISOL8_REAPER_SECONDS = env_float("ISOL8_REAPER_SECONDS", 10.0)
# A container of this host that nothing owns counts as leaked only when older than
# this (seconds): a younger one may be starting for a run right now.
ISOL8_ORPHAN_MIN_AGE = env_float("ISOL8_ORPHAN_MIN_AGE", 60.0)
# How often the CPU that sessions use between their runs is charged to their tenants.
ISOL8_METER_SECONDS = env_float("ISOL8_METER_SECONDS", 60.0)
# How often idle sessions are looked for (pruned past cleanup.maxContainerAgeMs).
ISOL8_PRUNE_SECONDS = env_float("ISOL8_PRUNE_SECONDS", 60.0)
# Events of an execution are kept this long after it ends, for resuming streams.
ISOL8_EVENT_RETENTION = env_int("EVENT_RETENTION", 3600)
# Bytes of live events one execution may publish (its output is also capped per
# stream by maxOutputSize); past it, live output stops with a marker.
ISOL8_EVENTS_MAX_BYTES = env_int("ISOL8_EVENTS_MAX_BYTES", 16 * 1024 * 1024)
# Event streams (SSE) one tenant may hold open at once; "none" = no limit.
ISOL8_TENANT_MAX_STREAMS = env_quota("ISOL8_TENANT_MAX_STREAMS", 100)
# SSE keep-alive comment interval (api.md: a silent program keeps its stream).
ISOL8_SSE_KEEPALIVE = env_float("ISOL8_SSE_KEEPALIVE", 10.0)
# Tenant quota defaults for new tenants (api.md "Defaults"); "none" = no limit.
# The master key's `default` tenant has no limits of its own (tenants/models.py).
ISOL8_TENANT_DEFAULTS: dict[str, int | None] = {
    "max_concurrent": env_quota("ISOL8_TENANT_MAX_CONCURRENT", 5),
    "max_per_minute": env_quota("ISOL8_TENANT_MAX_PER_MINUTE", 120),
    "max_sessions": env_quota("ISOL8_TENANT_MAX_SESSIONS", 20),
    # All of a tenant's live sessions together.
    "max_session_memory": env_quota("ISOL8_TENANT_MAX_SESSION_MEMORY", 8 * 1024**3),
    "max_session_cpus": env_quota("ISOL8_TENANT_MAX_SESSION_CPUS", 8),
    "max_timeout_ms": env_int("ISOL8_TENANT_MAX_TIMEOUT_MS", 300_000),
    "max_memory": env_int("ISOL8_TENANT_MAX_MEMORY", 2 * 1024**3),
}
# Failed authentications one client address may make per minute before all its
# requests get 429 for the rest of that minute.
ISOL8_AUTH_FAILURES_PER_MINUTE = env_int("ISOL8_AUTH_FAILURES_PER_MINUTE", 30)
# A request's body must arrive within this many seconds (slow senders are cut off).
ISOL8_BODY_TIMEOUT = env_float("ISOL8_BODY_TIMEOUT", 30.0)
# How long a stream token (for browsers' EventSource/WebSocket) stays valid.
ISOL8_STREAM_TOKEN_TTL = env_int("ISOL8_STREAM_TOKEN_TTL", 300)
# Seconds between the last-used stamps written for an API key: a write per
# request would put a database write on every hot path.
ISOL8_KEY_LAST_USED_RESOLUTION = env_int("ISOL8_KEY_LAST_USED_RESOLUTION", 60)

# The engine's configuration (sandbox/config.py): built here, handed to the
# engine by the worker and the image commands (sandbox.config.configure).
SANDBOX = SandboxConfig(
    host=ISOL8_WORKER_HOST,
    mode=ISOL8_SANDBOX_MODE,
    runtimes=tuple(ISOL8_RUNTIMES),
    default_limits=Limits(
        timeout_ms=ISOL8_DEFAULTS.timeout_ms,
        memory=ISOL8_DEFAULTS.memory_limit,
        cpu=ISOL8_DEFAULTS.cpu_limit,
        pids=ISOL8_DEFAULTS.pids_limit,
        max_output=ISOL8_DEFAULTS.max_output_size,
        sandbox_size=ISOL8_DEFAULTS.sandbox_size,
        tmp_size=ISOL8_DEFAULTS.tmp_size,
        network=ISOL8_DEFAULTS.network,
    ),
    images_dir=ISOL8_IMAGES_DIR,
    base_image=ISOL8_BASE_IMAGE,
    image_prefix=ISOL8_IMAGE_PREFIX,
    debian_mirror=ISOL8_DEBIAN_MIRROR,
    extra_ca_dir=Path(ISOL8_EXTRA_CA_DIR),
    python_fork_server=ISOL8_PYTHON_FORK_SERVER,
    inodes=ISOL8_INODES,
    nofile=ISOL8_NOFILE,
    fsize=ISOL8_FSIZE,
    shm_size=ISOL8_SHM_SIZE,
    msgqueue=ISOL8_MSGQUEUE,
    uid_base=ISOL8_SANDBOX_UID_BASE,
    uid_count=ISOL8_SANDBOX_UID_COUNT,
    file_max_bytes=ISOL8_FILE_MAX_BYTES,
    output_files_max=ISOL8_OUTPUT_FILES_MAX,
    display_max_bytes=ISOL8_DISPLAY_MAX_BYTES,
    science_image=ISOL8_SCIENCE_IMAGE,
    pool_size=ISOL8_POOL_SIZE,
    idle_per_tenant=ISOL8_TENANT_IDLE_MAX,
    idle_seconds=ISOL8_TENANT_IDLE_SECONDS,
    package_cache=ISOL8_PACKAGE_CACHE,
    install_timeout_ms=ISOL8_INSTALL_TIMEOUT_MS,
    egress_allow=tuple(ISOL8_EGRESS_ALLOW),
    egress_dir=ISOL8_EGRESS_DIR,
    egress_permit_networks=tuple(ISOL8_EGRESS_PERMIT_NETWORKS),
    prebuilt_images=ISOL8_CONFIG.prebuilt_images,
)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        # isol8_site/logs.py: one JSON object per line, its fields at the top level.
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger", "message": "event"},
        },
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
        "json": {"class": "logging.StreamHandler", "formatter": "json"},
    },
    "root": {"handlers": ["console"], "level": env("ISOL8_LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "isol8.request": {"handlers": ["json"], "level": "INFO", "propagate": False},
        "isol8.execution": {"handlers": ["json"], "level": "INFO", "propagate": False},
    },
}
