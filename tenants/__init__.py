"""Tenants and their API keys: hashing, authentication, stream tokens, quotas, the admin.

It owns who a caller is (authentication.py, throttle.py for failed attempts,
tokens.py for browsers' stream tokens), what a tenant may use at once and per
month (quotas.py, atomic in Redis) and key management (services.py, apis.py).

It may import ``isol8_site`` and ``sandbox.runtimes``; nothing of the other apps.
"""
