"""The project: settings, the Celery app, the web's door to the workers, the shared wire, errors, health.

It owns what every other package stands on: ``settings.py`` (one env-driven
module; it builds the engine's SandboxConfig), ``celery.py`` (the app and the
beat schedule, no domain imports), ``dispatch.py`` (task names and queues: the
only way from the web to the workers), ``wire.py`` (every Redis key and message
web and worker share), ``errors.py`` (domain errors and their HTTP mapping),
``redis.py``, ``health.py``, the ASGI entry point and its body guard.

It may import the engine's data modules (``sandbox.spec``, ``runtimes``,
``config``, ``errors``) and nothing of the apps, except in its two composition
roots: ``urls.py`` names every app's views and ``asgi.py`` hands the body guard
the tenants' authenticator (both allowed by the import rules in .importlinter).
"""

from isol8_site.celery import app as celery_app

__all__ = ("celery_app",)
