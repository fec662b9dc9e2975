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
    """Add the Content-Security-Policy header to every response that does not set its own."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if not settings.CONTENT_SECURITY_POLICY or HEADER in response:
            return response
        # DEBUG's technical 404/500 pages are all inline styles and scripts; they are never served in production.
        if settings.DEBUG and response.status_code in (404, 500):
            return response
        response[HEADER] = policy(request)
        return response
