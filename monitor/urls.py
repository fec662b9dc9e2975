from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from dashboard import api, sse, views

urlpatterns = [
    path("", views.overview, name="overview"),
    path("sources/<str:slug>/", views.source_detail, name="source"),
    path("api/v1/ingest", api.ingest, name="api-ingest"),
    path("api/v2/write", api.write_line_protocol, name="api-write-line-protocol"),
    path("api/v1/metrics", api.metrics, name="api-metrics"),
    path("api/v1/series", api.series, name="api-series"),
    path("api/v1/stream", sse.stream, name="api-stream"),
    path("share/<str:secret>/", views.share_page, name="share"),
    path("share/<str:secret>/series", views.share_series, name="share-series"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", views.prometheus_metrics, name="metrics"),
    path("", include("dashboard.urls")),  # dashboards and alerts (#6)
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
]
