from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from dashboard import api
from dashboard.live import sse

urlpatterns = [
    # The machine API: ingest and reads (dashboard/api.py), the Server-Sent Events stream (dashboard/live/sse.py).
    path("api/v1/ingest", api.ingest, name="api-ingest"),
    path("api/v2/write", api.write_line_protocol, name="api-write-line-protocol"),
    path("api/v1/metrics", api.metrics, name="api-metrics"),
    path("api/v1/series", api.series, name="api-series"),
    path("api/v1/stream", sse.stream, name="api-stream"),
    # Operator pages and the JSON endpoints they call, health and /metrics.
    path("", include("dashboard.pages.urls")),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
]
