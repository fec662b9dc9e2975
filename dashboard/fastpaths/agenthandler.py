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

Nor do they need what ASGIHandler wraps around every request: a
ThreadSensitiveContext (a new thread for each request's first
sync_to_async), the request_started and request_finished signals sent
through sync_to_async (close_old_connections, on that thread), and the view
run as a task beside a second task that listens for a disconnect. Under
fan-out load each of those thread hops waited for the event loop's turn: an
ingest took 20-35 ms at the median with 1,000 viewers connected. Here the
view runs on the loop; the agent views reach the database only on a token
cache miss, through database_sync_to_async, which closes stale connections
itself; and an ingest is not cancelled half-way when its client goes away
(the writer commits it either way).

What the middleware did that still matters is done here: the Host header
is checked against ALLOWED_HOSTS, and where HTTPS is required
(SECURE_SSL_REDIRECT) a plain-HTTP request is refused with a JSON error
rather than redirected, since a redirected POST would not be re-sent by an
agent and its token has already crossed the wire in clear.
"""

from __future__ import annotations

import tempfile

from django.conf import settings
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.exception import convert_exception_to_response
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import set_script_prefix

# Exact paths (no trailing slash variants: agents are configured with these).
AGENT_PATHS = frozenset({"/api/v1/ingest", "/api/v2/write"})


class AgentAPIHandler(ASGIHandler):
    """Serve AGENT_PATHS with URL routing, views and error handling of Django, and no middleware."""

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            raise ValueError(f"the agent handler serves HTTP only, not {scope['type']}")
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        try:
            set_script_prefix(get_script_prefix(scope))
            request, response = self.create_request(scope, body_file)
            if request is not None:
                response = await self.get_response_async(request)
            await self.send_response(response, send)
            response.close()  # JSON responses: no I/O; request_finished finds no connection on this thread
        finally:
            body_file.close()

    async def read_body(self, receive):
        """Read the body, keeping at most one byte over PULSEBOARD_MAX_BODY_BYTES; the rest is read and dropped.

        Django's own read keeps everything (to a temporary file), and its
        request.body then refuses anything over DATA_UPLOAD_MAX_MEMORY_SIZE
        (2.5 MiB) with an HTML 400 and a logged traceback. Here the
        documented limit is the real one: the view reads what was kept with
        dashboard.api.read_body, which answers 413 payload_too_large in JSON
        when the one extra byte is there. The body is read to its end
        rather than cut off, so that the client, still sending, gets that
        answer instead of a reset connection.
        """
        keep = settings.PULSEBOARD["MAX_BODY_BYTES"] + 1
        body_file = tempfile.SpooledTemporaryFile(max_size=settings.FILE_UPLOAD_MAX_MEMORY_SIZE, mode="w+b")
        kept = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                body_file.close()
                raise RequestAborted()
            chunk = message.get("body", b"")
            if chunk and kept < keep:
                chunk = chunk[: keep - kept]
                body_file.write(chunk)
                kept += len(chunk)
            if not message.get("more_body", False):
                break
        body_file.seek(0)
        return body_file

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
