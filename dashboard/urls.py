"""Routes of the operator dashboards and alerts (issue #6), included from monitor/urls.py."""

from __future__ import annotations

from django.urls import path

from dashboard import alertscreen, boardapi, pages

urlpatterns = [
    path("d/", pages.dashboard_list, name="dashboards"),
    path("d/<slug:slug>/", pages.dashboard_page, name="dashboard"),
    path("api/v1/dashboards/<slug:slug>/layout", pages.save_layout, name="api-dashboard-layout"),
    # Dashboards in the page (#13 items 5 and 7): dashboard/boardapi.py.
    path("api/v1/dashboards", boardapi.board_collection, name="api-dashboards"),
    path("api/v1/dashboards/import", boardapi.board_import, name="api-dashboard-import"),
    path("api/v1/dashboards/<slug:slug>", boardapi.board_detail, name="api-dashboard"),
    path("api/v1/dashboards/<slug:slug>/duplicate", boardapi.board_duplicate, name="api-dashboard-duplicate"),
    path("api/v1/dashboards/<slug:slug>/export", boardapi.board_export, name="api-dashboard-export"),
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
