"""The answer to a request refused by Django's CSRF check: the one JSON error shape under /api/, Django's page elsewhere."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views.csrf import csrf_failure as django_csrf_failure

from dashboard.api import error_response
from dashboard.exceptions import PulseboardError


class CsrfFailed(PulseboardError):
    """A cookie-authenticated write came without the session's CSRF token (header X-CSRFToken) or from another origin."""

    code = "csrf_failed"
    status = 403


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """Refuse a write that failed the CSRF check (settings.CSRF_FAILURE_VIEW)."""
    if request.path.startswith("/api/"):
        return error_response(
            CsrfFailed(f"CSRF check failed ({reason}); send the csrftoken cookie's value in the X-CSRFToken header")
        )
    return django_csrf_failure(request, reason)
