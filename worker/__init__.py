"""The Celery worker process: it owns this host's sandboxes and runs what the web enqueues.

It owns the process's lifecycle and heartbeat (daemon.py), running one
execution from claim to finish (runs.py), the sandboxes of this host's
sessions and their file operations (sessions.py), and the Celery entry points
(tasks.py, the only module Celery loads: ``isol8_site.celery`` names it).

It may import everything: ``executions``, ``sessions_app``, ``tenants``,
``isol8_site`` and the whole ``sandbox`` engine. Nothing imports it: the web
reaches it only through task names (isol8_site/dispatch.py) and Redis
(isol8_site/wire.py).
"""
