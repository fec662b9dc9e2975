"""Sign-in throttling (django-axes): the lockout page, and one log line when a client gets locked out.

docs/security.md, "Sign-in throttling". Settings: LOGIN_THROTTLE,
LOGIN_FAILURE_LIMIT, LOGIN_COOLOFF_MIN, LOGIN_LOCKOUT_BY.
"""

from __future__ import annotations

import logging
import math

from axes.helpers import get_client_username, get_cool_off
from axes.models import AccessAttempt
from axes.signals import user_locked_out
from django.conf import settings
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

log = logging.getLogger(__name__)


def _client_ip(request: HttpRequest) -> str | None:
    return getattr(request, "axes_ip_address", None) or request.META.get("REMOTE_ADDR")


def retry_at(request: HttpRequest, username: str):
    """Return when this client's lockout ends: its last counted failure plus the cool-off."""
    attempts = AccessAttempt.objects.filter(ip_address=_client_ip(request))
    if settings.LOGIN_LOCKOUT_BY == "username+ip":
        attempts = attempts.filter(username=username)
    last = attempts.order_by("-attempt_time").values_list("attempt_time", flat=True).first()
    return (last or timezone.now()) + get_cool_off(request)


def locked_out(request: HttpRequest, original_response=None, credentials: dict | None = None) -> HttpResponse:
    """Answer a sign-in while the client is locked out: 429, what happened, what to do and when to retry."""
    username = get_client_username(request, credentials) or ""
    until = retry_at(request, username)
    seconds = max(1, math.ceil((until - timezone.now()).total_seconds()))
    context = {
        "username": username,
        "failure_limit": settings.AXES_FAILURE_LIMIT,
        "cooloff_min": settings.LOGIN_COOLOFF_MIN,
        "retry_at": until,
        "retry_in_min": math.ceil(seconds / 60),
        "by_address_only": settings.LOGIN_LOCKOUT_BY == "ip",
    }
    response = render(request, "registration/locked_out.html", context, status=429)
    response["Retry-After"] = str(seconds)
    response["Cache-Control"] = "no-store"
    return response


def connect_signals() -> None:
    """Log each lockout once, when it starts (called from DashboardConfig.ready)."""

    @receiver(user_locked_out, dispatch_uid="pulseboard-lockout-log")
    def _log_lockout(sender, request, username, ip_address, **kwargs) -> None:
        if getattr(request, "axes_failures_since_start", None) is None:
            return  # a retry during the lockout, refused without being counted: logged when the lock began
        log.warning(
            "sign-in locked for %d min after %d failed attempts: user %r from %s",
            settings.LOGIN_COOLOFF_MIN,
            settings.AXES_FAILURE_LIMIT,
            username,
            ip_address,
        )
