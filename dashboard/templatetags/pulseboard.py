"""Template helpers shared by every page."""

from __future__ import annotations

from django import template

from dashboard.panels import timezone_of

register = template.Library()


@register.simple_tag(takes_context=True)
def viewer_timezone(context) -> str:
    """Return the signed-in viewer's time zone choice for body[data-timezone] (read by format.js)."""
    request = context.get("request")
    user = getattr(request, "user", None)
    return timezone_of(user) if user is not None else "browser"
