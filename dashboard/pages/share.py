"""Share links: a read-only kiosk view of one dashboard and its series, no sign-in needed."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from dashboard import panels
from dashboard.api import error_response, series_response
from dashboard.exceptions import NotAuthenticated
from dashboard.models import ShareLink


def _share_link_or_404(secret: str) -> ShareLink:
    link = ShareLink.find(secret)
    if link is None:
        raise Http404("This share link is unknown or was revoked.")
    return link


def share_page(request: HttpRequest, secret: str) -> HttpResponse:
    """GET /share/<secret>/: a read-only kiosk view of one dashboard, no sign-in needed."""
    link = _share_link_or_404(secret)
    dashboard = link.dashboard
    # The dashboards' own page and renderer (dashboard.js, panels.js) in share mode: same panels, same charts.
    config = panels.share_config(dashboard, link.principal(), secret, panels.chosen_values(request.GET))
    response = render(request, "dashboard/share.html", {"board": dashboard, "config": config})
    # The secret is in the URL: keep it out of other sites' logs and out of shared caches.
    response["Referrer-Policy"] = "no-referrer"
    response["Cache-Control"] = "private, no-store"
    return response


async def share_series(request: HttpRequest, secret: str) -> HttpResponse:
    """GET /share/<secret>/series: /api/v1/series limited to the shared dashboard's panel metrics (JSON or CSV)."""
    link = await sync_to_async(ShareLink.find)(secret)
    if link is None:
        return error_response(NotAuthenticated("this share link is unknown or was revoked"))
    return await series_response(link.principal(), request)
