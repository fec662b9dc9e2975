"""Content-Security-Policy on every response: scripts, styles and connections from this site only.

The pages carry no inline script, no inline style and no event-handler
attribute (data reaches modules through `json_script`, whose
`type="application/json"` is not executed, so CSP has nothing to allow), and
the admin of Django 5.2 has none either, so one policy serves every page.
The live socket is named explicitly in connect-src (ws: and wss: of the
request's own host) because older browsers do not count ws: as 'self'.
docs/security.md, "Content-Security-Policy".
"""

from __future__ import annotations

from collections.abc import Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse

HEADER = "Content-Security-Policy"


def policy(request: HttpRequest) -> str:
    """Return the policy for one response; {socket} in CONTENT_SECURITY_POLICY becomes ws(s) of the request's host."""
    try:
        host = request.get_host()
        sockets = f"ws://{host} wss://{host}"
    except DisallowedHost:
        sockets = ""
    return settings.CONTENT_SECURITY_POLICY.replace("{socket}", sockets).replace("  ", " ")


class ContentSecurityPolicyMiddleware:
    """Add the Content-Security-Policy header to every response that does not set its own (sync and async).

    Async-capable because one sync-only middleware makes Django run the whole
    chain on asgiref's single sync thread and hold it while an async view
    runs; the ingest views wait for the writer, whose alert evaluation needs
    that same thread, so a first ingest before the rule cache was filled
    never finished (found by running tests/test_lineprotocol.py alone).
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if iscoroutinefunction(self):
            return self.__acall__(request)
        return self._add_header(request, self.get_response(request))

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        return self._add_header(request, await self.get_response(request))

    @staticmethod
    def _add_header(request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if not settings.CONTENT_SECURITY_POLICY or HEADER in response:
            return response
        # DEBUG's technical 404/500 pages are all inline styles and scripts; they are never served in production.
        if settings.DEBUG and response.status_code in (404, 500):
            return response
        response[HEADER] = policy(request)
        return response
