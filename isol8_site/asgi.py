"""ASGI entry point: the API and its SSE streams (uvicorn serves it)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "isol8_site.settings")

application = get_asgi_application()
