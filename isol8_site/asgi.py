"""ASGI entry point: the API and its SSE streams (uvicorn serves it)."""

import os
from typing import Any

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "isol8_site.settings")


class OneHopASGIHandler(ASGIHandler):
    """Runs the whole middleware chain and the view in one hop to a thread.

    Django's ASGI handler builds an async middleware chain, in which every
    sync-style middleware (all of Django's own) hops to a thread and back for
    each of its hooks: 14 hops per API request with our middleware list, each
    a thread hand-off and an event-loop wake-up. Our views are sync, so this
    handler builds the sync chain and enters it once; streamed responses are
    still sent by the event loop.
    """

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)
        chain: Any = self._middleware_chain  # type: ignore[has-type]  # set by load_middleware
        self._middleware_chain = sync_to_async(chain, thread_sensitive=True)


def get_application() -> OneHopASGIHandler:
    import django

    django.setup(set_prefix=False)
    return OneHopASGIHandler()


application = get_application()
