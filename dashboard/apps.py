from __future__ import annotations

from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "dashboard"
    verbose_name = "Pulseboard"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported here: models must be loaded before these modules import them.
        from dashboard import actions, lockout, permissions

        permissions.connect_signals()
        lockout.connect_signals()
        actions.connect_signals()
