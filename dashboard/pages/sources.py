"""The overview of every source and one source's page: live values and charts that start from recent history."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from dashboard.models import Source


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
