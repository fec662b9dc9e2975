"""The staff's Django admin: sources, metrics, samples, tokens, dashboards and alert rules."""

from __future__ import annotations

from functools import cached_property

import msgspec
from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db import models
from django.utils import timezone
from django.utils.html import format_html

from dashboard import layout, permissions
from dashboard.alerts.forms import RULE_FIELDS, AlertRuleForm
from dashboard.models import (
    AgentToken,
    AlertEvent,
    AlertInstance,
    AlertRule,
    Dashboard,
    HourRollup,
    Metric,
    MinuteRollup,
    NotificationDelivery,
    Panel,
    ReadToken,
    Sample,
    ShareLink,
    Source,
    TenMinuteRollup,
    UserPreference,
)
from dashboard.timeutil import to_datetime


class CappedCountPaginator(Paginator):
    """Count at most CAP rows so the change list of a table with millions of rows stays fast."""

    CAP = 10_000

    @cached_property
    def count(self) -> int:
        return self.object_list[: self.CAP + 1].count()


@admin.register(Source)
class SourceAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "kind", "last_seen", "stale", "samples_accepted", "samples_rejected", "created"]
    list_filter = ["kind"]
    search_fields = ["slug", "name"]
    readonly_fields = ["created", "last_seen", "samples_accepted", "samples_rejected"]
    filter_horizontal = ["viewer_groups"]

    @admin.display(boolean=True, description="stale")
    def stale(self, obj: Source) -> bool:
        return obj.is_stale()


@admin.register(Metric)
class MetricAdmin(admin.ModelAdmin):
    list_display = ["key", "source", "kind", "unit", "last_value", "last_time"]
    list_filter = ["kind", "source__kind"]
    search_fields = ["key", "description"]
    list_select_related = ["source"]
    readonly_fields = ["created", "last_ts", "last_value"]
    raw_id_fields = ["source"]

    @admin.display(description="last sample")
    def last_time(self, obj: Metric):
        return obj.last_time


class PerMetricRowsAdmin(admin.ModelAdmin):
    """Samples and rollups: millions of rows a metric, so no full count, newest first, the metric by id."""

    list_select_related = ["metric"]
    raw_id_fields = ["metric"]
    search_fields = ["metric__key"]
    ordering = ["-id"]
    paginator = CappedCountPaginator
    show_full_result_count = False


@admin.register(Sample)
class SampleAdmin(PerMetricRowsAdmin):
    list_display = ["metric", "time", "value"]
    list_filter = ["metric__source__kind"]

    @admin.display(description="time (UTC)")
    def time(self, obj: Sample):
        return to_datetime(obj.ts)


class RollupAdmin(PerMetricRowsAdmin):
    list_display = ["metric", "bucket_time", "min", "max", "avg", "count", "first", "last"]

    @admin.display(description="bucket (UTC)")
    def bucket_time(self, obj):
        return to_datetime(obj.bucket)


admin.site.register(MinuteRollup, RollupAdmin)
admin.site.register(TenMinuteRollup, RollupAdmin)
admin.site.register(HourRollup, RollupAdmin)


class SecretShownOnceAdmin(admin.ModelAdmin):
    """Admin for rows that carry a hashed secret: create shows the secret once; revoke stamps revoked_at."""

    actions = ["revoke"]
    created_message = "Created. Copy it now, it is never shown again: <code id='{}'>{}</code>"
    element_id = "secret"
    noun = "item(s)"

    def issue(self, request, obj) -> tuple[models.Model, str]:
        """Create the row from the form's object and return it with the text to show once."""
        raise NotImplementedError

    @admin.display(boolean=True)
    def revoked(self, obj) -> bool:
        return obj.is_revoked

    def save_model(self, request, obj, form, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        row, shown = self.issue(request, obj)
        obj.pk, obj.lookup, obj.secret_hash = row.pk, row.lookup, row.secret_hash
        messages.warning(request, format_html(self.created_message, self.element_id, shown))

    @admin.action(description="Revoke selected")
    def revoke(self, request, queryset) -> None:
        count = queryset.filter(revoked_at=None).update(revoked_at=timezone.now())
        if hasattr(self.model, "forget_cached"):  # agent tokens are cached per process for CACHE_S
            self.model.forget_cached()
        if self.model is ShareLink:  # an update sends no signal: wake this process's share sockets now
            permissions.notify_access_changed()
        self.message_user(request, f"Revoked {count} {self.noun}.")


@admin.register(AgentToken)
class AgentTokenAdmin(SecretShownOnceAdmin):
    list_display = [
        "name",
        "lookup",
        "source_patterns",
        "created",
        "last_used",
        "revoked",
        "samples_accepted",
        "samples_rejected",
    ]
    readonly_fields = [
        "lookup",
        "created",
        "created_by",
        "last_used",
        "revoked_at",
        "samples_accepted",
        "samples_rejected",
    ]
    fields = ["name", "source_patterns", *readonly_fields]
    search_fields = ["name", "lookup"]
    created_message = "Token created. Copy the secret now, it is never shown again: <code id='{}'>{}</code>"
    element_id = "agent-token-secret"
    noun = "token(s)"

    def issue(self, request, obj: AgentToken) -> tuple[AgentToken, str]:
        return AgentToken.issue(obj.name, obj.source_patterns, created_by=request.user)


@admin.register(ReadToken)
class ReadTokenAdmin(SecretShownOnceAdmin):
    list_display = ["name", "user", "lookup", "source_patterns", "created", "last_used", "revoked"]
    list_filter = ["user"]
    readonly_fields = ["lookup", "created", "last_used", "revoked_at"]
    fields = ["name", "user", "source_patterns", *readonly_fields]
    search_fields = ["name", "lookup", "user__username"]
    created_message = (
        "Read token created. Copy the secret now, it is never shown again; send it as "
        "'Authorization: Bearer …': <code id='{}'>{}</code>"
    )
    element_id = "read-token-secret"
    noun = "read token(s)"

    def issue(self, request, obj: ReadToken) -> tuple[ReadToken, str]:
        return ReadToken.issue(obj.user, obj.name, obj.source_patterns)


class PanelForm(forms.ModelForm):
    """A panel checked against the layout schema (dashboard/layout.py); errors land on the field at fault."""

    SPEC_FIELDS = ("title", "kind", "metrics", "options", "x", "y", "w", "h")

    class Meta:
        model = Panel
        fields = ["title", "kind", "metrics", "options", "x", "y", "w", "h"]

    def clean(self) -> dict:
        data = super().clean()
        if self.errors or data.get("DELETE"):
            return data
        spec = {name: data.get(name) for name in self.SPEC_FIELDS}
        if spec["options"] is None:
            spec["options"] = {}
        try:
            self.checked = layout.check_panel(spec)
        except layout.LayoutError as exc:
            field = exc.panel_field if exc.panel_field in self.fields else None
            self.add_error(field, exc.message)
            return data
        data.update(layout.as_fields(self.checked))
        return data


class PanelFormSet(forms.BaseInlineFormSet):
    """The dashboard's panels together: no two may share a grid cell."""

    def clean(self) -> None:
        super().clean()
        kept = [f for f in self.forms if getattr(f, "checked", None) and not self._should_delete_form(f)]
        try:
            layout.check_overlaps([f.checked for f in kept])
        except layout.LayoutError as exc:
            index = int(exc.field.split("[")[1].split("]")[0])
            kept[index].add_error("y", exc.message)


class PanelInline(admin.TabularInline):
    model = Panel
    form = PanelForm
    formset = PanelFormSet
    extra = 0

    def get_formset(self, request, obj=None, **kwargs):
        """Refuse panel patterns beyond what the saving user may read (dashboard/permissions.py)."""
        formset = super().get_formset(request, obj, **kwargs)

        class PatternCheckedFormSet(formset):
            def clean(self) -> None:
                super().clean()
                rows = [
                    (index, form.cleaned_data.get("title", ""), form.cleaned_data.get("metrics"))
                    for index, form in enumerate(self.forms)
                    if getattr(form, "cleaned_data", None) and not form.cleaned_data.get("DELETE")
                ]
                try:
                    permissions.check_patterns(request.user, rows, permissions.stored_patterns(obj))
                except permissions.PatternNotAllowed as exc:
                    raise ValidationError(exc.message, code=exc.code) from None

        return PatternCheckedFormSet


class DashboardForm(forms.ModelForm):
    """A dashboard's variables checked by the layout schema (dashboard/layout.py), as the page and import check them."""

    class Meta:
        model = Dashboard
        fields = "__all__"

    def clean_variables(self) -> list:
        try:
            checked = layout.check_variables(self.cleaned_data.get("variables"))
        except layout.LayoutError as exc:
            raise forms.ValidationError(f"{exc.field}: {exc.message}") from None
        return [msgspec.to_builtins(v) for v in checked]


@admin.register(Dashboard)
class DashboardAdmin(admin.ModelAdmin):
    form = DashboardForm
    list_display = ["title", "slug", "owner", "updated"]
    prepopulated_fields = {"slug": ["title"]}
    inlines = [PanelInline]
    filter_horizontal = ["viewer_groups", "editor_groups"]

    def save_model(self, request, obj: Dashboard, form, change: bool) -> None:
        if obj.owner_id is None and not change:
            obj.owner = request.user  # a board made in the admin belongs to whoever made it
        super().save_model(request, obj, form, change)


@admin.register(ShareLink)
class ShareLinkAdmin(SecretShownOnceAdmin):
    list_display = ["dashboard", "label", "lookup", "created", "created_by", "revoked"]
    readonly_fields = ["lookup", "created", "created_by", "revoked_at"]
    fields = ["dashboard", "label", "lookup", "created", "created_by", "revoked_at"]
    search_fields = ["label", "lookup", "dashboard__title"]
    created_message = "Share link created. Copy it now, it is never shown again: <code id='{}'>{}</code>"
    element_id = "share-link-url"
    noun = "share link(s)"

    def issue(self, request, obj: ShareLink) -> tuple[ShareLink, str]:
        link, secret = ShareLink.issue(obj.dashboard, obj.label, created_by=request.user)
        return link, request.build_absolute_uri(f"/share/{secret}/")


class AlertInstanceInline(admin.TabularInline):
    """The current state of the rule for each matching metric, read-only (changes come from the stream)."""

    model = AlertInstance
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ["metric", "state", "since", "last_value", "acknowledged_by", "silenced_until"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(AlertRule)
class AlertRuleAdmin(admin.ModelAdmin):
    form = AlertRuleForm  # the one rule validation, shared with the alerts screen (dashboard/alerts/forms.py)
    # The form's fields, in its order, but the no-data wait and the notification targets (too wide for a row).
    list_display = [*(name for name in RULE_FIELDS if name not in ("nodata_s", "webhook_url", "email_to")), "firing"]
    list_filter = ["severity", "condition", "enabled"]
    search_fields = ["name", "metric_pattern"]
    inlines = [AlertInstanceInline]
    actions = ["disable_rules"]

    @admin.action(description="Disable selected rules (their alerts resolve)", permissions=["change"])
    def disable_rules(self, request, queryset) -> None:
        # One save per rule, not QuerySet.update: the save ends each rule's alerts at once (actions.retire_rule).
        rules = list(queryset.filter(enabled=True))
        for rule in rules:
            rule.enabled = False
            rule.save(update_fields=["enabled"])
        self.message_user(request, f"Disabled {len(rules)} rule{'' if len(rules) == 1 else 's'}.")

    @admin.display(description="Firing now")
    def firing(self, obj: AlertRule) -> int:
        return obj.instances.filter(state__in=["firing", "nodata"]).count()


@admin.register(AlertInstance)
class AlertInstanceAdmin(admin.ModelAdmin):
    list_display = ["rule", "metric", "state", "since", "last_value", "acknowledged_by", "silenced_until"]
    list_filter = ["state", "rule"]
    raw_id_fields = ["metric"]


@admin.register(AlertEvent)
class AlertEventAdmin(admin.ModelAdmin):
    list_display = ["at", "rule", "metric", "from_state", "to_state", "value", "message"]
    list_filter = ["to_state", "rule"]
    raw_id_fields = ["metric"]
    date_hierarchy = "at"


@admin.register(NotificationDelivery)
class NotificationDeliveryAdmin(admin.ModelAdmin):
    list_display = ["event", "channel", "target", "status", "attempts", "delivered_at"]
    list_filter = ["status", "channel"]


admin.site.register(UserPreference)
admin.site.site_header = "Pulseboard administration"
admin.site.site_title = "Pulseboard"
