from __future__ import annotations

from django.urls import path

from dashboard.live.websocket import LiveConsumer

websocket_urlpatterns = [
    path("ws/live/", LiveConsumer.as_asgi()),
    # A kiosk's socket: the share link's secret is the credential (docs/security.md).
    path("ws/share/<str:secret>/", LiveConsumer.as_asgi()),
]
