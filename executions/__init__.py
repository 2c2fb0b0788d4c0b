"""Executions: the Execution record, ``/execute`` and ``/execute/stream``, history, cancel, events.

It owns request validation (serializers.py), a tenant's policy for a run
(policy.py), the writes of an execution's life (services.py: start, wait,
cancel, fail; claim and finish for the worker), the shape of results
(results.py), live events and every terminal text a stream carries
(events.py), the reaper (reaper.py) and the admin.

It may import ``sessions_app``, ``tenants``, ``isol8_site`` and the engine's
data modules (``sandbox.spec``, ``sandbox.runtimes``); never ``worker`` or the
engine's machinery (it reaches the workers through isol8_site/dispatch.py).
"""
