"""Routes of the operator dashboards and alerts (issue #6), included from monitor/urls.py."""

from __future__ import annotations

from django.urls import path

from dashboard import alertscreen, pages

urlpatterns = [
    path("d/", pages.dashboard_list, name="dashboards"),
    path("d/<slug:slug>/", pages.dashboard_page, name="dashboard"),
    path("api/v1/dashboards/<slug:slug>/layout", pages.save_layout, name="api-dashboard-layout"),
    path("api/v1/preferences", pages.save_preferences, name="api-preferences"),
    path("api/v1/alerts", pages.active_alerts, name="api-alerts"),
    path("api/v1/alerts/<int:pk>/ack", pages.acknowledge_alert, name="api-alert-ack"),
    path("api/v1/alerts/<int:pk>/silence", pages.silence_alert, name="api-alert-silence"),
    # The alerts screen (#13 item 8).
    path("alerts/", alertscreen.alerts_page, name="alerts"),
    path("api/v1/alert-rules", alertscreen.rule_collection, name="api-alert-rules"),
    path("api/v1/alert-rules/preview", alertscreen.rule_preview, name="api-alert-rule-preview"),
    path("api/v1/alert-rules/<int:pk>", alertscreen.rule_detail, name="api-alert-rule"),
    path("api/v1/alert-rules/<int:pk>/history", alertscreen.rule_history, name="api-alert-rule-history"),
]
