"""The WebSocket routes, and the router that dispatches a handshake to one without staying on its stack."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from channels.routing import URLRouter
from django.urls import path

from dashboard.live.websocket import LiveConsumer

websocket_urlpatterns = [
    path("ws/live/", LiveConsumer.as_asgi()),
    # A kiosk's socket: the share link's secret is the credential (docs/security.md).
    path("ws/share/<str:secret>/", LiveConsumer.as_asgi()),
]


class FlatURLRouter(URLRouter):
    """Channels' URLRouter, returning the route's coroutine instead of awaiting it.

    Channels' router awaits the application it picked, so it stays suspended
    with its frame and its copy of the scope for the socket's whole life
    (~2.8 KB per idle WebSocket, bench/connmem.py --top); this one matches
    the same way, then steps aside.
    """

    _asgi_single_callable = True  # asgiref would take a class with a plain __call__ for an ASGI 2 app

    def __call__(self, scope: dict[str, Any], receive, send) -> Awaitable[None]:  # type: ignore[override]
        path = scope.get("path_remaining", scope.get("path", None))
        if path is None:
            raise ValueError("No 'path' key in connection scope, cannot route URLs")
        if "path_remaining" not in scope:
            root_path = scope.get("root_path", "")
            if root_path and not path.startswith(root_path):
                raise ValueError(f"No route found for path {path!r}.")
            path = path[len(root_path) :]
        path = path.lstrip("/")
        for route in self.routes:
            match = route.pattern.match(path)
            if match:
                new_path, args, kwargs = match
                kwargs.update(route.default_args)
                outer = scope.get("url_route", {})
                return route.callback(
                    dict(
                        scope,
                        path_remaining=new_path,
                        url_route={
                            "args": outer.get("args", ()) + args,
                            "kwargs": {**outer.get("kwargs", {}), **kwargs},
                        },
                    ),
                    receive,
                    send,
                )
        raise ValueError(f"No route found for path {path!r}.")


websocket_application = FlatURLRouter(websocket_urlpatterns)
