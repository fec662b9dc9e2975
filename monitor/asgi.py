"""ASGI entry point: HTTP through Django, WebSocket through the live consumer.

Static files are served by the app itself (SERVE_STATIC=1, the default) so the
embedded mode needs nothing else; behind nginx set SERVE_STATIC=0.
"""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "monitor.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from django.conf import settings  # noqa: E402

from dashboard import background, fastpaths  # noqa: E402
from dashboard.fastpaths.agenthandler import AgentAPIHandler, route  # noqa: E402
from dashboard.origins import ServedOriginValidator  # noqa: E402
from dashboard.routing import websocket_application  # noqa: E402

# Agent posts skip the middleware chain (dashboard/fastpaths/agenthandler.py says why), where the guard
# allows it (dashboard/fastpaths/__init__.py); else Django's own handler serves them too.
http_app = route(AgentAPIHandler(), django_asgi_app) if fastpaths.enabled("agent_handler") else django_asgi_app
if settings.SERVE_STATIC:
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    http_app = ASGIStaticFilesHandler(http_app)


def by_protocol(apps: dict):
    """Channels' ProtocolTypeRouter, returning the chosen app's coroutine instead of awaiting it.

    An awaiting router stays suspended with its frame for a socket's whole
    life (~650 B per idle WebSocket, bench/connmem.py).
    """

    def application(scope, receive, send):
        app = apps.get(scope["type"])
        if app is None:
            raise ValueError(f"No application configured for scope type {scope['type']!r}")
        return app(scope, receive, send)

    application._asgi_single_callable = True  # asgiref would take a plain function for an ASGI 2 app
    return application


# Daphne has no start-up hook: the first request of any kind starts the periodic jobs.
application = background.starting(
    by_protocol(
        {
            "http": http_app,
            # No AuthMiddlewareStack: the live consumer reads the session cookie once at
            # connect; the stack kept the session, the user and three scope copies per socket.
            # The Origin must be one this server serves: scheme, host and port (dashboard/origins.py).
            "websocket": ServedOriginValidator(websocket_application),
        }
    )
)

# Speed tricks on other libraries' private internals, each checked against the versions it was
# written for and off with one WARNING when they differ (dashboard/fastpaths/__init__.py).
from dashboard.fastpaths import gcpolicy, gilpolicy, inputqueue, leansocket, mallocpolicy, writethrough  # noqa: E402

if settings.PULSEBOARD["WRITE_THROUGH"]:
    writethrough.install()

# A ~100 B input queue per connection instead of asyncio.Queue's ~3 KB (an idle socket's memory).
inputqueue.install()

# An open WebSocket keeps none of its handshake and no copy of autobahn's options (~12 KB an idle socket).
leansocket.install()

# Few, planned full garbage collections instead of a 100 ms pause every few seconds.
gcpolicy.configure()

# Memory freed after big subscribes goes back to the system instead of staying with the process.
mallocpolicy.configure()

# The writer's threads and the event loop hand the GIL to each other within 1 ms, not 5.
gilpolicy.configure()
