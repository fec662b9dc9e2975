"""The agent's error conditions, one documented class each.

PulseboardError and InvalidReading are the server's too: they live here, not
in dashboard/exceptions.py (which imports them), so that a host running only
the agent needs no Django while the MQTT collector parses timestamps with the
server's own rules and catches the server's own error.
"""

from __future__ import annotations


class PulseboardError(Exception):
    """Base class: carries a stable machine code, an HTTP status and the offending field."""

    code = "error"
    status = 400

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def as_dict(self) -> dict:
        body = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


class InvalidReading(PulseboardError):
    """One reading is malformed (bad number, key or timestamp); its neighbours are unaffected."""

    code = "invalid_reading"


class AgentError(Exception):
    """The agent cannot start or finish what it was asked (bad options or config, no token); the message says how to fix it."""
