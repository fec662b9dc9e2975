"""Pulseboard's error conditions, one documented class each.

API views turn these into one JSON shape with dashboard.api.error_response:
{"error": {"code": ..., "message": ..., "field": ...}}.
"""

from __future__ import annotations

# The base class and InvalidReading are shared with the agent, which runs without Django.
from collectors.exceptions import InvalidReading, PulseboardError

__all__ = [
    "BadRequest",
    "Forbidden",
    "InvalidReading",
    "InvalidRule",
    "NotAuthenticated",
    "NotFound",
    "OutOfScope",
    "PatternMatchesNothing",
    "PatternMatchesUnreadable",
    "PayloadTooLarge",
    "PulseboardError",
    "RateLimited",
    "StorageUnavailable",
    "UnknownMetric",
]


class UnknownMetric(InvalidReading):
    """The reading names a metric that does not exist and the policy is to refuse new metrics."""

    code = "unknown_metric"


class OutOfScope(PulseboardError):
    """The agent token may not write readings of this source."""

    code = "out_of_scope"
    status = 403


class BadRequest(PulseboardError):
    """The request as a whole cannot be read (not JSON, wrong shape)."""

    code = "bad_request"


class PayloadTooLarge(PulseboardError):
    """The body or the number of samples is over the documented limit."""

    code = "payload_too_large"
    status = 413


class NotAuthenticated(PulseboardError):
    """No token, an unknown token or a revoked token."""

    code = "not_authenticated"
    status = 401


class RateLimited(PulseboardError):
    """The token sent more than its rate limit; retry after the given seconds."""

    code = "rate_limited"
    status = 429

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class StorageUnavailable(PulseboardError):
    """The database cannot be reached; nothing was stored, the client should retry."""

    code = "storage_unavailable"
    status = 503


class ReadOnlyToken(PulseboardError):
    """A read token was presented to change something; read tokens only read."""

    code = "read_only_token"
    status = 403


class Forbidden(PulseboardError):
    """The user is signed in but may not change this dashboard, alert or rule."""

    code = "forbidden"
    status = 403


class NotFound(PulseboardError):
    """The dashboard, alert or rule does not exist or the user may not read it."""

    code = "not_found"
    status = 404


class InvalidRule(BadRequest):
    """A rule written in the alerts screen does not validate; names the first bad field (and close keys)."""

    code = "invalid_rule"

    def __init__(self, message: str, *, field: str, errors: dict[str, list[str]], suggestions: list[str]) -> None:
        super().__init__(message, field=field)
        self.errors = errors
        self.suggestions = suggestions

    def as_dict(self) -> dict:
        body = super().as_dict()
        body["errors"] = self.errors
        if self.suggestions:
            body["suggestions"] = self.suggestions
        return body


class PatternMatchesNothing(InvalidRule):
    """The rule's metric pattern matches no metric the author may read, and they did not allow that."""

    code = "pattern_matches_nothing"


class PatternMatchesUnreadable(InvalidRule):
    """The rule's metric pattern also matches a metric the author may not read (its notifications would show it)."""

    code = "pattern_matches_unreadable"
