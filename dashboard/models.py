"""Pulseboard's tables: what is watched, what was measured, who may see it, and what alerts.

Timestamps of measurements are integer microseconds since the epoch (see
dashboard/timeutil.py); bookkeeping times (created, last used) are datetimes.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import secrets
import time

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

from dashboard.layout import all_values, expand
from dashboard.timeutil import to_datetime

KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,199}$")
KEY_CHARSET_HELP = "1-200 characters: letters, digits, '_', '.', ':', '-'; not starting with '.', ':' or '-'."
key_validator = RegexValidator(KEY_RE, KEY_CHARSET_HELP)


def glob_matches(pattern: str, value: str) -> bool:
    """Return whether a key matches a glob where '*' is any run of characters."""
    return fnmatch.fnmatchcase(value, pattern)


class VisibleQuerySet(models.QuerySet):
    """Rows a user may read: staff see all; others see unrestricted rows and those granted to their groups."""

    def visible_to(self, user) -> VisibleQuerySet:
        if not user.is_authenticated:
            return self.none()
        token = getattr(user, "read_token", None)
        if token is not None:
            return token.restrict(self.visible_to(token.user))
        share = getattr(user, "share_link", None)
        if share is not None:
            return share.restrict(self)
        if user.is_staff or user.is_superuser:
            return self
        return self.filter(models.Q(viewer_groups=None) | models.Q(viewer_groups__user=user)).distinct()


class Source(models.Model):
    """A thing that produces readings: a host, an IoT device, a market feed, or an agent."""

    class Kind(models.TextChoices):
        HOST = "host", "Host"
        DEVICE = "device", "IoT device"
        FEED = "feed", "Market feed"
        AGENT = "agent", "Collector agent"
        OTHER = "other", "Other"

    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.OTHER, verbose_name="source kind")
    name = models.CharField(max_length=200)
    slug = models.CharField(max_length=120, unique=True, validators=[key_validator])
    labels = models.JSONField(default=dict, blank=True)
    created = models.DateTimeField(default=timezone.now)
    last_seen = models.DateTimeField(null=True, blank=True, db_index=True)
    # How often the source is expected to report; a source silent for three
    # intervals is shown as stale.
    expected_interval_s = models.FloatField(default=10.0)
    samples_accepted = models.BigIntegerField(default=0)
    samples_rejected = models.BigIntegerField(default=0)
    # Empty: every signed-in user may read it. Otherwise only these groups (and staff).
    viewer_groups = models.ManyToManyField(Group, blank=True, related_name="visible_sources")

    objects = VisibleQuerySet.as_manager()

    class Meta:
        ordering = ["kind", "slug"]

    def __str__(self) -> str:
        return self.slug

    def is_stale(self, now=None) -> bool:
        """Return whether the source has been silent for more than three expected intervals."""
        if self.last_seen is None:
            return True
        now = now or timezone.now()
        return (now - self.last_seen).total_seconds() > 3 * self.expected_interval_s


class MetricQuerySet(models.QuerySet):
    def visible_to(self, user) -> MetricQuerySet:
        token = getattr(user, "read_token", None)
        if token is not None:
            return self.filter(source__in=Source.objects.visible_to(user))
        share = getattr(user, "share_link", None)
        if share is not None:
            return share.restrict(self)
        return self.filter(source__in=Source.objects.visible_to(user))

    def matching(self, pattern: str) -> MetricQuerySet:
        """Return metrics whose key matches a glob ('*' any run of characters)."""
        if "*" not in pattern and "?" not in pattern and "[" not in pattern:
            return self.filter(key=pattern)
        prefix = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
        candidates = self.filter(key__startswith=prefix) if prefix else self.all()
        keys = [k for k in candidates.values_list("key", flat=True) if glob_matches(pattern, k)]
        return self.filter(key__in=keys)


class Metric(models.Model):
    """One time series of a source, addressed by its global key '<source slug>.<name>'."""

    class Kind(models.TextChoices):
        GAUGE = "gauge", "Gauge"
        COUNTER = "counter", "Counter"
        RATE = "rate", "Rate"
        PRICE = "price", "Price"
        VOLUME = "volume", "Volume"

    source = models.ForeignKey(Source, on_delete=models.CASCADE, related_name="metrics")
    name = models.CharField(max_length=200)
    key = models.CharField(max_length=200, unique=True, validators=[key_validator])
    unit = models.CharField(max_length=32, blank=True)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.GAUGE, verbose_name="metric kind")
    description = models.TextField(blank=True)
    created = models.DateTimeField(default=timezone.now)
    last_ts = models.BigIntegerField(null=True, blank=True, help_text="µs since epoch of the newest sample")
    last_value = models.FloatField(null=True, blank=True)
    # Retention overrides in days; empty means the site default (settings.PULSEBOARD).
    raw_retention_days = models.PositiveIntegerField(null=True, blank=True)
    minute_retention_days = models.PositiveIntegerField(null=True, blank=True)
    ten_minute_retention_days = models.PositiveIntegerField(null=True, blank=True)
    hour_retention_days = models.PositiveIntegerField(null=True, blank=True)

    objects = MetricQuerySet.as_manager()

    class Meta:
        ordering = ["key"]
        constraints = [models.UniqueConstraint(fields=["source", "name"], name="metric_source_name_uniq")]

    def __str__(self) -> str:
        return self.key

    @property
    def last_time(self):
        return to_datetime(self.last_ts)


class Sample(models.Model):
    """One reading: a finite float at a microsecond timestamp; (metric, ts) is unique so retries store nothing twice."""

    # No foreign key in the database: its check, deferred to every commit, was
    # one index probe per inserted row, and the writer only inserts ids it has
    # just resolved. Deleting a metric still deletes its samples (Django's
    # on_delete). docs/history.md, "Partitioning".
    metric = models.ForeignKey(Metric, on_delete=models.CASCADE, db_index=False, db_constraint=False, related_name="+")
    ts = models.BigIntegerField(help_text="µs since epoch, UTC")
    value = models.FloatField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["metric", "ts"], name="sample_metric_ts_uniq")]

    def __str__(self) -> str:
        return f"{self.metric_id}@{self.ts}={self.value}"

    @property
    def time(self):
        return to_datetime(self.ts)


class Rollup(models.Model):
    """Aggregate of one metric over one bucket: min, max, sum, count, first and last (OHLC for prices)."""

    metric = models.ForeignKey(Metric, on_delete=models.CASCADE, db_index=False, related_name="+")
    bucket = models.BigIntegerField(help_text="µs since epoch of the bucket start")
    min = models.FloatField()
    max = models.FloatField()
    sum = models.FloatField()
    count = models.BigIntegerField()
    first = models.FloatField()
    first_ts = models.BigIntegerField()
    last = models.FloatField()
    last_ts = models.BigIntegerField()

    class Meta:
        abstract = True

    @property
    def avg(self) -> float:
        return self.sum / self.count if self.count else float("nan")


class MinuteRollup(Rollup):
    BUCKET_S = 60

    class Meta:
        constraints = [models.UniqueConstraint(fields=["metric", "bucket"], name="minuterollup_metric_bucket_uniq")]


class TenMinuteRollup(Rollup):
    # Between the minute and the hour so that a month charts from 4,320 rows
    # instead of 43,200 minutes (an hour tier has only 720 buckets there).
    BUCKET_S = 600

    class Meta:
        constraints = [models.UniqueConstraint(fields=["metric", "bucket"], name="tenminuterollup_metric_bucket_uniq")]


class HourRollup(Rollup):
    BUCKET_S = 3600

    class Meta:
        constraints = [models.UniqueConstraint(fields=["metric", "bucket"], name="hourrollup_metric_bucket_uniq")]


def _hash_secret(secret: str) -> str:
    # Secrets are 32 random bytes, so a fast hash is as strong as a slow one here.
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret(prefix: str) -> tuple[str, str, str]:
    """Return (lookup, secret, hash): the lookup finds the row, only the hash is stored, the secret is shown once."""
    lookup = secrets.token_hex(6)
    secret = f"{prefix}{lookup}_{secrets.token_urlsafe(32)}"
    return lookup, secret, _hash_secret(secret)


def find_by_secret(queryset: models.QuerySet, prefix: str, secret: str):
    """Return the row of the queryset whose lookup and hash match a presented secret, or None."""
    if not secret.startswith(prefix):
        return None
    lookup = secret[len(prefix) :].split("_", 1)[0]
    row = queryset.filter(lookup=lookup).first()
    if row is None or not secrets.compare_digest(row.secret_hash, _hash_secret(secret)):
        return None
    return row


class AgentToken(models.Model):
    """A credential for a collector agent or device; only a hash of the secret is stored."""

    PREFIX = "pb_"

    name = models.CharField(max_length=100)
    lookup = models.CharField(max_length=16, unique=True, editable=False)
    secret_hash = models.CharField(max_length=64, editable=False)
    source_patterns = models.TextField(
        default="*", help_text="Source slugs this token may write, one glob per line ('*' for all)."
    )
    created = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    last_used = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    samples_accepted = models.BigIntegerField(default=0)
    samples_rejected = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @classmethod
    def issue(cls, name: str, source_patterns: str = "*", created_by=None) -> tuple[AgentToken, str]:
        """Create a token and return it with its secret, which is never shown again."""
        lookup, secret, secret_hash = new_secret(cls.PREFIX)
        token = cls.objects.create(
            name=name,
            lookup=lookup,
            secret_hash=secret_hash,
            source_patterns=source_patterns,
            created_by=created_by,
        )
        return token, secret

    @classmethod
    def find(cls, secret: str) -> AgentToken | None:
        """Return the token for a presented secret (revoked ones too: callers say why they refuse), or None."""
        return find_by_secret(cls.objects.all(), cls.PREFIX, secret)

    # secret hash -> (monotonic expiry, token). An agent posts many times a
    # second; looking its token up each time cost a database connection and a
    # query per request (several ms of the ingest round trip, and so of live
    # latency). Saving a token in this process (revoking it in the admin)
    # clears the cache; other processes see a change within CACHE_S.
    CACHE_S = 5.0
    _cache: dict[str, tuple[float, AgentToken]] = {}

    @classmethod
    def find_cached(cls, secret: str) -> AgentToken | None:
        """Return a token found by `find` less than CACHE_S ago, without touching the database; else None."""
        entry = cls._cache.get(_hash_secret(secret))
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    @classmethod
    def remember(cls, secret: str, token: AgentToken) -> None:
        """Keep a token that `find` returned for CACHE_S (a bounded cache: it is emptied when it grows large)."""
        if len(cls._cache) >= 10_000:
            cls._cache.clear()
        cls._cache[_hash_secret(secret)] = (time.monotonic() + cls.CACHE_S, token)

    @classmethod
    def forget_cached(cls) -> None:
        """Empty this process's cache (after a revocation or edit, which must take effect at once here)."""
        cls._cache.clear()

    def save(self, *args, **kwargs) -> None:
        super().save(*args, **kwargs)
        self.forget_cached()

    def delete(self, *args, **kwargs):
        self.forget_cached()
        return super().delete(*args, **kwargs)

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def patterns(self) -> list[str]:
        return [p.strip() for p in self.source_patterns.splitlines() if p.strip()]

    def allows(self, source_slug: str) -> bool:
        """Return whether this token may write readings of the source."""
        return any(glob_matches(p, source_slug) for p in self.patterns())


class ReadToken(models.Model):
    """A credential for scripts and other tools to read what one user may read; only a hash is stored.

    It reads exactly as its user would (the same `visible_to` checks, at the
    time of each request: a user who loses a group or is deactivated reads
    less or nothing), optionally narrowed to source slug patterns, and never
    writes (docs/security.md, Read tokens).
    """

    PREFIX = "pbr_"

    name = models.CharField(max_length=100)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="read_tokens")
    lookup = models.CharField(max_length=16, unique=True, editable=False)
    secret_hash = models.CharField(max_length=64, editable=False)
    source_patterns = models.TextField(
        default="*", help_text="Source slugs this token may read, one glob per line ('*' for all the user reads)."
    )
    created = models.DateTimeField(default=timezone.now)
    last_used = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["user__username", "name"]

    def __str__(self) -> str:
        return self.name

    @classmethod
    def issue(cls, user, name: str, source_patterns: str = "*") -> tuple[ReadToken, str]:
        """Create a token for a user and return it with its secret, which is never shown again."""
        lookup, secret, secret_hash = new_secret(cls.PREFIX)
        token = cls.objects.create(
            name=name, user=user, lookup=lookup, secret_hash=secret_hash, source_patterns=source_patterns
        )
        return token, secret

    @classmethod
    def find(cls, secret: str) -> ReadToken | None:
        """Return the usable token for a presented secret (not revoked, its user active), or None."""
        queryset = cls.objects.filter(revoked_at=None, user__is_active=True).select_related("user")
        return find_by_secret(queryset, cls.PREFIX, secret)

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def patterns(self) -> list[str]:
        return [p.strip() for p in self.source_patterns.splitlines() if p.strip()]

    def restrict(self, queryset: models.QuerySet) -> models.QuerySet:
        """Narrow a Source or Dashboard queryset (already the user's) to the token's source patterns."""
        patterns = self.patterns()
        if queryset.model is not Source or "*" in patterns:
            return queryset
        slugs = [
            slug for slug in queryset.values_list("slug", flat=True) if any(glob_matches(p, slug) for p in patterns)
        ]
        return queryset.filter(slug__in=slugs)

    def reader(self) -> TokenReader:
        return TokenReader(self)


class TokenReader:
    """Who reads with a read token: the token's user for every read check, and nothing that writes.

    It stands in for request.user / scope["user"]; `visible_to` sees
    `read_token` and applies the user's grants narrowed by the token.
    """

    is_authenticated = True
    is_anonymous = False
    # Staff status opens write paths (acknowledging alerts, operator actions); what a staff
    # user may read is granted through `visible_to(token.user)` instead.
    is_staff = False
    is_superuser = False

    def __init__(self, token: ReadToken) -> None:
        self.read_token = token
        self.user = token.user
        self.pk = self.id = token.user.pk
        self.is_active = token.user.is_active
        self.username = token.user.username

    def __str__(self) -> str:
        return f"read token {self.read_token.lookup} of {self.username}"

    def get_username(self) -> str:
        return self.username

    def has_perm(self, perm: str, obj=None) -> bool:
        return False  # a read token never edits, acknowledges or administers


class Dashboard(models.Model):
    """A named grid of panels."""

    title = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created = models.DateTimeField(default=timezone.now)
    updated = models.DateTimeField(auto_now=True)
    # Empty: every signed-in user may view it. Otherwise only these groups (and staff).
    viewer_groups = models.ManyToManyField(Group, blank=True, related_name="visible_dashboards")
    editor_groups = models.ManyToManyField(Group, blank=True, related_name="editable_dashboards")
    variables = models.JSONField(
        default=list,
        blank=True,
        help_text='Pickers for $name in panel patterns, e.g. [{"name": "device", "glob": "iot.*"}]',
    )

    objects = VisibleQuerySet.as_manager()

    class Meta:
        ordering = ["title"]

    def __str__(self) -> str:
        return self.title

    def can_edit(self, user) -> bool:
        if not user.is_authenticated:
            return False
        if user.is_staff or user.is_superuser or self.owner_id == user.id:
            return True
        return self.editor_groups.filter(user=user).exists()


class Panel(models.Model):
    """One chart, stat, table or candlestick on a dashboard."""

    class Kind(models.TextChoices):
        TIMESERIES = "timeseries", "Time series"
        STAT = "stat", "Stat"
        TABLE = "table", "Table"
        CANDLESTICK = "candlestick", "Candlestick"

    dashboard = models.ForeignKey(Dashboard, on_delete=models.CASCADE, related_name="panels")
    title = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.TIMESERIES)
    metrics = models.JSONField(default=list, help_text='Metric keys or globs, e.g. ["iot.*.temperature"]')
    options = models.JSONField(default=dict, blank=True, help_text="unit, thresholds, decimals, min, max")
    x = models.PositiveSmallIntegerField(default=0)
    y = models.PositiveSmallIntegerField(default=0)
    w = models.PositiveSmallIntegerField(default=6)
    h = models.PositiveSmallIntegerField(default=4)

    class Meta:
        ordering = ["dashboard", "y", "x", "id"]

    def __str__(self) -> str:
        return self.title


class ShareLink(models.Model):
    """A revocable read-only link that grants one dashboard to a kiosk, nothing else.

    It grants no more than its creator may read at the time of use: the
    metrics of the dashboard's panels that the creator can read now. A
    creator who is deactivated or deleted (or a link from before creators
    were recorded and without one) disables the link. docs/security.md.
    """

    dashboard = models.ForeignKey(Dashboard, on_delete=models.CASCADE, related_name="share_links")
    label = models.CharField(max_length=100, blank=True)
    lookup = models.CharField(max_length=16, unique=True, editable=False)
    secret_hash = models.CharField(max_length=64, editable=False)
    created = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        editable=False,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The link shows only what this user may read; without an active creator it shows nothing.",
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    PREFIX = "pbs_"

    def __str__(self) -> str:
        return self.label or f"share {self.lookup}"

    @classmethod
    def issue(cls, dashboard: Dashboard, label: str = "", *, created_by) -> tuple[ShareLink, str]:
        """Create a link in a user's name and return it with its secret, which is never shown again."""
        lookup, secret, secret_hash = new_secret(cls.PREFIX)
        link = cls.objects.create(
            dashboard=dashboard, label=label, lookup=lookup, secret_hash=secret_hash, created_by=created_by
        )
        return link, secret

    @classmethod
    def usable(cls) -> models.QuerySet:
        """Links that grant something: not revoked, and made by a user who still exists and is active."""
        return cls.objects.filter(revoked_at=None, created_by__is_active=True)

    @classmethod
    def find(cls, secret: str) -> ShareLink | None:
        """Return the usable link for a presented secret, or None (unknown, revoked, or its creator gone)."""
        return find_by_secret(cls.usable().select_related("dashboard"), cls.PREFIX, secret)

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def grant(self) -> frozenset[int] | None:
        """Return the ids of the metrics the link grants now, or None when the link no longer works.

        The grant is the dashboard's panel keys and globs as the link's creator
        may read them, read from the database on every call: a revocation, a
        deactivated or deleted creator, or a creator who lost a group narrows
        the link at once. A board variable counts as "All" (its glob): the
        link grants every choice of its pickers.
        """
        fresh = ShareLink.usable().select_related("created_by", "dashboard").filter(pk=self.pk).first()
        if fresh is None:
            return None
        readable = Metric.objects.visible_to(fresh.created_by)
        everything = all_values(fresh.dashboard.variables)
        ids: set[int] = set()
        for patterns in Panel.objects.filter(dashboard_id=fresh.dashboard_id).values_list("metrics", flat=True):
            for pattern in patterns if isinstance(patterns, list) else []:
                if isinstance(pattern, str) and pattern:
                    ids.update(readable.matching(expand(pattern, everything)).values_list("id", flat=True))
        return frozenset(ids)

    def metric_ids(self) -> list[int]:
        """Return the ids of the metrics the link grants now (none when it no longer works)."""
        return sorted(self.grant() or ())

    def restrict(self, queryset: models.QuerySet) -> models.QuerySet:
        """Narrow a Metric, Source or Dashboard queryset to what this link grants now."""
        model = queryset.model
        if model is Dashboard:
            # Ask the database, not this instance: a link revoked since it was loaded grants nothing.
            if not ShareLink.usable().filter(pk=self.pk).exists():
                return queryset.none()
            return queryset.filter(id=self.dashboard_id)
        if model is Metric:
            return queryset.filter(id__in=self.metric_ids())
        if model is Source:
            return queryset.filter(metrics__id__in=self.metric_ids()).distinct()
        return queryset.none()

    def principal(self) -> SharePrincipal:
        return SharePrincipal(self)


class SharePrincipal:
    """Who reads through a share link: signed in as nobody, granted one dashboard's panel metrics.

    It stands in for request.user / scope["user"] so every `visible_to(user)`
    (live subscribe, history, export) applies the link's narrower grant, which
    is computed afresh on each call (ShareLink.metric_ids).
    """

    is_authenticated = True
    is_anonymous = False
    is_staff = False
    is_superuser = False
    is_active = True
    pk = id = None

    def __init__(self, link: ShareLink) -> None:
        self.share_link = link

    def __str__(self) -> str:
        return f"share link {self.share_link.lookup}"

    def get_username(self) -> str:
        return str(self)

    def has_perm(self, perm: str, obj=None) -> bool:
        return False


class UserPreference(models.Model):
    """Per-user display settings, such as the time zone charts are drawn in."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="preference")
    timezone = models.CharField(max_length=64, default="browser", help_text="'browser', 'UTC' or an IANA zone")


class AlertRule(models.Model):
    """A condition on a metric (or a glob of metrics) evaluated on the stream as samples arrive."""

    class Condition(models.TextChoices):
        ABOVE = "above", "Above threshold"
        BELOW = "below", "Below threshold"
        OUTSIDE = "outside", "Outside band"
        NODATA = "nodata", "No data for"
        RATE = "rate", "Rate of change above (per second)"

    class Severity(models.TextChoices):
        INFO = "info", "Info"
        WARNING = "warning", "Warning"
        CRITICAL = "critical", "Critical"

    name = models.CharField(max_length=200)
    metric_pattern = models.CharField(max_length=200, help_text="Metric key or glob, e.g. iot.*.temperature")
    condition = models.CharField(max_length=16, choices=Condition.choices, default=Condition.ABOVE)
    threshold = models.FloatField(null=True, blank=True)
    threshold_high = models.FloatField(null=True, blank=True, help_text="Upper edge for 'outside band'")
    for_s = models.PositiveIntegerField(default=0, help_text="Seconds the condition must hold before firing")
    nodata_s = models.PositiveIntegerField(default=60, help_text="Silence that counts as no data")
    severity = models.CharField(max_length=16, choices=Severity.choices, default=Severity.WARNING)
    enabled = models.BooleanField(default=True)
    webhook_url = models.URLField(blank=True)
    email_to = models.TextField(blank=True, help_text="Addresses, one per line")
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class AlertInstance(models.Model):
    """The current state of one rule for one metric."""

    class State(models.TextChoices):
        OK = "ok", "OK"
        PENDING = "pending", "Pending"
        FIRING = "firing", "Firing"
        RESOLVED = "resolved", "Resolved"
        NODATA = "nodata", "No data"

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="instances")
    metric = models.ForeignKey(Metric, on_delete=models.CASCADE, related_name="alert_instances")
    state = models.CharField(max_length=16, choices=State.choices, default=State.OK)
    since = models.DateTimeField(default=timezone.now)
    pending_since_ts = models.BigIntegerField(null=True, blank=True)
    last_value = models.FloatField(null=True, blank=True)
    last_ts = models.BigIntegerField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    silenced_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["rule", "metric"], name="alertinstance_rule_metric_uniq")]


class AlertEvent(models.Model):
    """One state change of an alert instance, kept as history."""

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="events")
    metric = models.ForeignKey(Metric, on_delete=models.CASCADE, related_name="+")
    from_state = models.CharField(max_length=16)
    to_state = models.CharField(max_length=16)
    value = models.FloatField(null=True, blank=True)
    at = models.DateTimeField(default=timezone.now, db_index=True)
    message = models.TextField(blank=True)

    class Meta:
        ordering = ["-at"]

    def __str__(self) -> str:
        return f"{self.rule}: {self.from_state} → {self.to_state} at {self.at:%Y-%m-%d %H:%M:%S} UTC"


class NotificationDelivery(models.Model):
    """One attempt series to deliver an alert event to a webhook or an email address."""

    event = models.ForeignKey(AlertEvent, on_delete=models.CASCADE, related_name="deliveries")
    channel = models.CharField(max_length=16)  # "webhook" or "email"
    target = models.CharField(max_length=500)
    status = models.CharField(max_length=16, default="pending")  # pending, sent, failed
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "notification deliveries"

    def __str__(self) -> str:
        return f"{self.channel} to {self.target}: {self.status} after {self.attempts} attempt(s)"
