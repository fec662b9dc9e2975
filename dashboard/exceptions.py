"""Pulseboard's error conditions, one documented class each.

API views turn these into one JSON shape with dashboard.api.error_response:
{"error": {"code": ..., "message": ..., "field": ...}}.
"""

from __future__ import annotations

# The base class and InvalidReading are shared with the agent, which runs without Django.
from collectors.exceptions import InvalidReading, PulseboardError

__all__ = [
    "BadRequest",
    "InvalidReading",
    "NotAuthenticated",
    "OutOfScope",
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
