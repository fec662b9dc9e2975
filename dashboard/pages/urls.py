"""Routes of the operator pages and the JSON endpoints they call, by page; included from monitor/urls.py."""

from __future__ import annotations

from django.urls import path

from dashboard.pages import alerts, dashboards, health, share, sources

urlpatterns = [
    # Sources (dashboard/pages/sources.py).
    path("", sources.overview, name="overview"),
    path("sources/<str:slug>/", sources.source_detail, name="source"),
    # Dashboards and their API (dashboard/pages/dashboards.py); "import" before the <slug> routes.
    path("d/", dashboards.dashboard_list, name="dashboards"),
    path("d/<slug:slug>/", dashboards.dashboard_page, name="dashboard"),
    path("api/v1/dashboards/<slug:slug>/layout", dashboards.save_layout, name="api-dashboard-layout"),
    path("api/v1/dashboards", dashboards.board_collection, name="api-dashboards"),
    path("api/v1/dashboards/import", dashboards.board_import, name="api-dashboard-import"),
    path("api/v1/dashboards/<slug:slug>", dashboards.board_detail, name="api-dashboard"),
    path("api/v1/dashboards/<slug:slug>/duplicate", dashboards.board_duplicate, name="api-dashboard-duplicate"),
    path("api/v1/dashboards/<slug:slug>/export", dashboards.board_export, name="api-dashboard-export"),
    path("api/v1/preferences", dashboards.save_preferences, name="api-preferences"),
    # Alerts: the screen, rules, the banner, acknowledge and silence (dashboard/pages/alerts.py).
    path("alerts/", alerts.alerts_page, name="alerts"),
    path("api/v1/alert-rules", alerts.rule_collection, name="api-alert-rules"),
    path("api/v1/alert-rules/preview", alerts.rule_preview, name="api-alert-rule-preview"),
    path("api/v1/alert-rules/<int:pk>", alerts.rule_detail, name="api-alert-rule"),
    path("api/v1/alert-rules/<int:pk>/history", alerts.rule_history, name="api-alert-rule-history"),
    path("api/v1/alerts", alerts.active_alerts, name="api-alerts"),
    path("api/v1/alerts/<int:pk>/ack", alerts.acknowledge_alert, name="api-alert-ack"),
    path("api/v1/alerts/<int:pk>/silence", alerts.silence_alert, name="api-alert-silence"),
    # Share links (dashboard/pages/share.py).
    path("share/<str:secret>/", share.share_page, name="share"),
    path("share/<str:secret>/series", share.share_series, name="share-series"),
    # Health and scraping (dashboard/pages/health.py).
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.prometheus_metrics, name="metrics"),
]
