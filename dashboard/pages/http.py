"""What every page endpoint does with a request first: a signed-in person, and a JSON object body.

Every POST needs a signed-in user and the CSRF token (header X-CSRFToken);
rights are checked on the server, whatever the page shows. Errors use the
one JSON error shape of dashboard.api.error_response.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest

from dashboard.exceptions import BadRequest, NotAuthenticated, PayloadTooLarge


def signed_in(request: HttpRequest) -> None:
    """Raise NotAuthenticated unless a person is signed in (a share link's visitor is not)."""
    if not request.user.is_authenticated or getattr(request.user, "share_link", None) is not None:
        raise NotAuthenticated("sign in at /accounts/login/ first")


def json_body(request: HttpRequest, max_bytes: int | None = None, what: str = "the body") -> dict[str, Any]:
    """Return the request's JSON object; refuse a body over max_bytes (default Django's upload limit)."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE if max_bytes is None else max_bytes
    too_large = f"{what} is at most {limit} bytes"
    length = request.headers.get("Content-Length", "")
    if max_bytes is not None and length.isascii() and length.isdigit() and int(length) > max_bytes:
        raise PayloadTooLarge(too_large, field="body")
    try:
        raw = request.body
    except RequestDataTooBig:  # Django's DATA_UPLOAD_MAX_MEMORY_SIZE; its own answer is an HTML 400
        raise PayloadTooLarge(too_large, field="body") from None
    if max_bytes is not None and len(raw) > max_bytes:
        raise PayloadTooLarge(too_large, field="body")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, RecursionError):  # RecursionError: thousands of nested '['
        raise BadRequest("the body is not valid JSON", field="body") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", field="body")
    return body
