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
from redis.connection import parse_url as parse_redis_url

from isol8_site.config import ConfigError, load_config

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


def env_bool(name: str, default: bool) -> bool:
    return env(name, "1" if default else "0").lower() in ("1", "true", "yes", "on")


# Where the embedded defaults keep their state (SQLite database, generated secret).
DATA_DIR = Path(env("ISOL8_DATA_DIR", str(BASE_DIR / "var")))
DATA_DIR.mkdir(parents=True, exist_ok=True)


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
# test guesses of keys. Changing it invalidates every tenant key.
ISOL8_KEY_PEPPER = env("ISOL8_KEY_PEPPER") or SECRET_KEY
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
    "django_eventstream",
    "tenants",
    "executions",
    "sessions_app",
]

MIDDLEWARE = [
    "isol8_site.middleware.BodySizeLimitMiddleware",
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
REDIS_URL = env("REDIS_URL", "redis://127.0.0.1:6379/0")

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

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["tenants.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["tenants.authentication.IsTenant"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "isol8_site.errors.exception_handler",
    # JSON routes answer JSON whatever Accept says; stream routes negotiate
    # text/event-stream themselves (isol8_site/negotiation.py).
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "isol8_site.negotiation.JsonOnlyNegotiation",
    "UNAUTHENTICATED_USER": None,
}

# django-eventstream keeps events in Redis (see executions/events.py) so a stream
# can start from an execution's first event and resume after a disconnect.
EVENTSTREAM_STORAGE_CLASS = "executions.events.RedisEventStorage"
# No read timeout: the pub/sub listener of each web process waits for events as
# long as streams are open (redis-py 8 defaults to 5 s, which kills it when idle).
EVENTSTREAM_REDIS = {**parse_redis_url(REDIS_URL), "socket_timeout": None, "socket_keepalive": True}
EVENTSTREAM_CHANNELMANAGER_CLASS = "executions.events.ExecutionChannelManager"

# ---------------------------------------------------------------- isol8 itself

try:
    ISOL8_CONFIG = load_config()
except ConfigError as exc:
    # Stop here with the message naming the key, rather than a traceback.
    sys.stderr.write(f"isol8: bad config: {exc}\n")
    raise SystemExit(2) from exc

# The operator's master key (isol8's `serve --key`). Empty disables it.
ISOL8_API_KEY = env("ISOL8_API_KEY")
ISOL8_VERSION = "0.1.0"
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
ISOL8_RUNTIMES = [r for r in env("ISOL8_RUNTIMES", "python,node,bash,bun,deno").split(",") if r]
# "launcher" runs code through the in-container launcher over the attached
# stdin/stdout; "exec" does one `docker exec` per run (the fallback path).
ISOL8_SANDBOX_MODE = env("ISOL8_SANDBOX_MODE", "launcher")
# Python runs are forked from a python3 fork server the launcher keeps in each
# python sandbox, saving CPython's start-up per run; 0 starts python3 for every
# run. (The name is from when it was a pre-started interpreter, a "zygote".)
ISOL8_PYTHON_ZYGOTE = env_bool("ISOL8_PYTHON_ZYGOTE", True)
# Warm containers kept started per runtime; isol8.config.json's poolSize wins.
ISOL8_POOL_SIZE = env_int("ISOL8_POOL_SIZE", ISOL8_CONFIG.pool_size)
# Used containers kept (reset) for reuse by the same tenant, per tenant and
# runtime, and how long they may stay idle.
ISOL8_TENANT_IDLE_MAX = env_int("ISOL8_TENANT_IDLE_MAX", 4)
ISOL8_TENANT_IDLE_SECONDS = env_int("ISOL8_TENANT_IDLE_SECONDS", 120)
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
# Request bodies (api.md): 2 MiB on /execute, 16 MiB on /file (10 MiB decoded).
ISOL8_EXECUTE_BODY_MAX = env_int("ISOL8_EXECUTE_BODY_MAX", 2 * 1024 * 1024)
ISOL8_FILE_BODY_MAX = env_int("ISOL8_FILE_BODY_MAX", 16 * 1024 * 1024)
ISOL8_FILE_MAX_BYTES = env_int("ISOL8_FILE_MAX_BYTES", 10 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = ISOL8_FILE_BODY_MAX
# The history keeps at most this much raw output per stream and execution.
ISOL8_HISTORY_MAX_OUTPUT = env_int("ISOL8_HISTORY_MAX_OUTPUT", 1024 * 1024)
# How long a queued run may wait for a worker before it fails with 503.
ISOL8_QUEUE_TIMEOUT = env_float("ISOL8_QUEUE_TIMEOUT", 30.0)
# Package installs (installPackages): the registries the egress proxy lets
# installers reach, where installed package sets are cached (per tenant and set),
# and how long one install may take.
ISOL8_EGRESS_ALLOW = [
    h for h in env(
        "ISOL8_EGRESS_ALLOW", "pypi.org,files.pythonhosted.org,registry.npmjs.org,jsr.io,npm.jsr.io"
    ).split(",") if h
]
ISOL8_PACKAGE_CACHE = Path(env("ISOL8_PACKAGE_CACHE", str(DATA_DIR / "packages")))
ISOL8_INSTALL_TIMEOUT_MS = env_int("ISOL8_INSTALL_TIMEOUT_MS", 300_000)
ISOL8_MAX_PACKAGES = env_int("ISOL8_MAX_PACKAGES", 50)
# Requests waiting for a global slot (maxConcurrent) beyond this many get 503 at once.
ISOL8_MAX_QUEUE_DEPTH = env_int("ISOL8_MAX_QUEUE_DEPTH", 100)
# Extra time past the run's own timeout before the service gives up on a worker.
ISOL8_RESULT_GRACE = env_float("ISOL8_RESULT_GRACE", 15.0)
# Workers refresh a heartbeat this often; one silent for 3 beats counts as dead.
ISOL8_HEARTBEAT_SECONDS = env_float("ISOL8_HEARTBEAT_SECONDS", 5.0)
# How often the reaper fails runs of dead workers and removes orphaned containers.
ISOL8_REAPER_SECONDS = env_float("ISOL8_REAPER_SECONDS", 10.0)
# A container of this host that nothing owns counts as leaked only when older than
# this (seconds): a younger one may be starting for a run right now.
ISOL8_ORPHAN_MIN_AGE = env_float("ISOL8_ORPHAN_MIN_AGE", 60.0)
# How often idle sessions are looked for (pruned past cleanup.maxContainerAgeMs).
ISOL8_PRUNE_SECONDS = env_float("ISOL8_PRUNE_SECONDS", 60.0)
# Events of an execution are kept this long after it ends, for resuming streams.
ISOL8_EVENT_RETENTION = env_int("EVENT_RETENTION", 3600)
# SSE keep-alive comment interval (api.md: a silent program keeps its stream).
ISOL8_SSE_KEEPALIVE = env_float("ISOL8_SSE_KEEPALIVE", 10.0)
# Tenant quota defaults for new tenants (api.md "Defaults"); "none" = no limit.
# The master key's `default` tenant has no limits of its own (tenants/models.py).
ISOL8_TENANT_DEFAULTS: dict[str, int | None] = {
    "max_concurrent": env_quota("ISOL8_TENANT_MAX_CONCURRENT", 5),
    "max_per_minute": env_quota("ISOL8_TENANT_MAX_PER_MINUTE", 120),
    "max_sessions": env_quota("ISOL8_TENANT_MAX_SESSIONS", 20),
    "max_timeout_ms": env_int("ISOL8_TENANT_MAX_TIMEOUT_MS", 300_000),
    "max_memory": env_int("ISOL8_TENANT_MAX_MEMORY", 2 * 1024**3),
}
# How long a stream token (for browsers' EventSource/WebSocket) stays valid.
ISOL8_STREAM_TOKEN_TTL = env_int("ISOL8_STREAM_TOKEN_TTL", 300)
# Seconds between the last-used stamps written for an API key: a write per
# request would put a database write on every hot path.
ISOL8_KEY_LAST_USED_RESOLUTION = env_int("ISOL8_KEY_LAST_USED_RESOLUTION", 60)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("ISOL8_LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
