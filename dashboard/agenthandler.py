"""The ASGI handler for the agent endpoints: Django's request handling without the middleware chain.

An agent's POST is on the live path: the sample it carries is shown only
after the response's commit, so every millisecond of the ingest round trip
is a millisecond of live latency. Django runs each MiddlewareMixin
middleware of an async view through sync_to_async, twice (request and
response): seven middlewares cost fourteen thread hops, about 4 ms of a
7 ms request on this machine (bench/README.md, Fan-out). The agent
endpoints need none of them: they authenticate by token, not by session
or cookie (so no session, auth, CSRF or messages), and answer JSON to
programs (so no clickjacking header or slash redirects).

What the middleware did that still matters is done here: the Host header
is checked against ALLOWED_HOSTS, and where HTTPS is required
(SECURE_SSL_REDIRECT) a plain-HTTP request is refused with a JSON error
rather than redirected, since a redirected POST would not be re-sent by an
agent and its token has already crossed the wire in clear.
"""

from __future__ import annotations

from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.exception import convert_exception_to_response
from django.http import HttpRequest, HttpResponse, JsonResponse

# Exact paths (no trailing slash variants: agents are configured with these).
AGENT_PATHS = frozenset({"/api/v1/ingest", "/api/v2/write"})


class AgentAPIHandler(ASGIHandler):
    """Serve AGENT_PATHS with URL routing, views and error handling of Django, and no middleware."""

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=is_async)
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        self._middleware_chain = convert_exception_to_response(self._respond)

    async def _respond(self, request: HttpRequest) -> HttpResponse:
        request.get_host()  # raises DisallowedHost (400) as CommonMiddleware would
        if settings.SECURE_SSL_REDIRECT and not request.is_secure():
            error = {
                "code": "https_required",
                "message": "this server takes agent data over HTTPS only; use an https:// URL",
                "field": "url",
            }
            return JsonResponse({"error": error}, status=403)
        return await self._get_response_async(request)


def route(agent_app, other_app):
    """Return an ASGI app that sends AGENT_PATHS to agent_app and every other HTTP request to other_app."""

    async def app(scope, receive, send):
        target = agent_app if scope["path"] in AGENT_PATHS else other_app
        return await target(scope, receive, send)

    return app
