"""Persistent sessions: one sandbox per (tenant, sessionId), claimed one operation at a time.

It owns the Session record and the one definition of a live session
(``Session.objects.live()``), its claims, stop and prune (services.py), its
tenant-scoped reads (selectors.py), ``/sessions``, ``/session/{id}`` and the
file routes (apis.py) and the admin. (The label is ``sessions_app``:
``sessions`` is django.contrib.sessions'.)

It may import ``tenants``, ``isol8_site`` and ``sandbox.spec``; never
``executions`` or ``worker``.
"""
