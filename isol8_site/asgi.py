"""ASGI entry point: the API and its SSE streams (uvicorn serves it).

``application`` routes by scope type: HTTP goes to Django, behind the body
guard (isol8_site/bodyguard.py: limits, timeouts, authentication before the
body is read); a WebSocket handshake on /execute/ws goes to its consumer
(executions/ws.py, Django Channels), one on a path this server does not serve is refused with a JSON 404
(never the bare 500 an ASGI server sends when the app cannot take the scope);
``lifespan`` is acknowledged so uvicorn does not log that it is unsupported.
"""

import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "isol8_site.settings")

logger = logging.getLogger("isol8_site.asgi")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]


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


async def refuse_websocket(scope: Scope, receive: Receive, send: Send) -> None:
    """Refuse a WebSocket handshake for a path nobody serves: 404 JSON, or 403 without the extension."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    path = scope.get("path", "")
    logger.info("refused a WebSocket upgrade on %s: no WebSocket route there", path)
    if "websocket.http.response" in scope.get("extensions", {}):
        body = json.dumps({"error": f"No WebSocket route for {path}", "code": "not_found"}).encode()
        await send({
            "type": "websocket.http.response.start",
            "status": 404,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        })
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})


async def lifespan(receive: Receive, send: Send) -> None:
    """Django has no start-up or shutdown hooks to run; say so to the server."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def get_application() -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    import django

    django.setup(set_prefix=False)
    # Imported once the apps are loaded (the models need them).
    from channels.routing import URLRouter
    from django.urls import path

    from executions.ws import ExecuteSocket
    from isol8_site import tracing
    from isol8_site.bodyguard import BodyGuard
    from tenants.authentication import authenticate_scope

    tracing.configure("isol8-web")  # only if an OTLP endpoint is set

    http = BodyGuard(OneHopASGIHandler(), authenticate=authenticate_scope)
    websockets = URLRouter([path("execute/ws", ExecuteSocket.as_asgi())])
    websocket_paths = {"/execute/ws"}

    async def application(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await http(scope, receive, send)
        elif scope["type"] == "websocket":
            if scope.get("path") in websocket_paths:
                await websockets(scope, receive, send)
            else:
                await refuse_websocket(scope, receive, send)
        elif scope["type"] == "lifespan":
            await lifespan(receive, send)

    return application


application = get_application()
