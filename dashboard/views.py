"""Operator pages and health checks."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render

from dashboard.models import Metric, ShareLink, Source


@login_required
def overview(request: HttpRequest) -> HttpResponse:
    """All sources the user may read, with each metric's latest value updating live."""
    sources = Source.objects.visible_to(request.user).prefetch_related("metrics")
    return render(request, "dashboard/overview.html", {"sources": sources})


@login_required
def source_detail(request: HttpRequest, slug: str) -> HttpResponse:
    """One source: a live chart per metric that starts from the last minutes of history."""
    source = get_object_or_404(Source.objects.visible_to(request.user), slug=slug)
    metrics = list(source.metrics.all())
    config = [{"key": m.key, "name": m.name, "unit": m.unit, "kind": m.kind} for m in metrics]
    return render(
        request,
        "dashboard/source.html",
        {"source": source, "metrics": metrics, "config": config},
    )


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers."""
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: the database answers (the channel layer is checked by the async probe)."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:
        return JsonResponse({"status": "unavailable", "database": str(exc)}, status=503)
    return JsonResponse({"status": "ok", "database": "ok", "metrics": Metric.objects.count() >= 0})


def _share_link_or_404(secret: str) -> ShareLink:
    link = ShareLink.find(secret)
    if link is None:
        raise Http404("This share link is unknown or was revoked.")
    return link


def share_page(request: HttpRequest, secret: str) -> HttpResponse:
    """GET /share/<secret>/: a read-only kiosk view of one dashboard, no sign-in needed."""
    link = _share_link_or_404(secret)
    dashboard = link.dashboard
    panels = [
        {"title": p.title, "kind": p.kind, "metrics": p.metrics, "options": p.options}
        for p in dashboard.panels.all()
    ]
    response = render(
        request,
        "dashboard/share.html",
        {"dashboard": dashboard, "panels": panels, "socket_path": f"/ws/share/{secret}/"},
    )
    # The secret is in the URL: keep it out of other sites' logs and out of shared caches.
    response["Referrer-Policy"] = "no-referrer"
    response["Cache-Control"] = "private, no-store"
    return response


async def share_series(request: HttpRequest, secret: str) -> HttpResponse:
    """GET /share/<secret>/series: /api/v1/series limited to the shared dashboard's panel metrics (JSON or CSV)."""
    from asgiref.sync import sync_to_async
    from django.http import StreamingHttpResponse

    from dashboard import history
    from dashboard.api import error_response
    from dashboard.exceptions import BadRequest, NotAuthenticated, PulseboardError

    link = await sync_to_async(ShareLink.find)(secret)
    if link is None:
        return error_response(NotAuthenticated("this share link is unknown or was revoked"))
    output = request.GET.get("format", "json")
    try:
        if output not in ("json", "csv"):
            raise BadRequest("format must be 'json' or 'csv'", field="format")
        result = await sync_to_async(history.load_for_user)(link.principal(), request.GET)
    except PulseboardError as exc:
        return error_response(exc)
    if output == "json":
        return JsonResponse(result.as_dict())

    async def lines():
        for line in history.csv_lines(result):
            yield line

    return StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
