"""The one validation of an alert rule, shared by the alerts screen's API and the admin form.

A rule's metric pattern must match at least one metric its author may read,
unless the author says the metrics do not exist yet (`allow_empty_match`):
a typo such as `iot.*.temprature` is refused where it is written, with the
closest keys as suggestions.
"""

from __future__ import annotations

import difflib
import fnmatch
import heapq
import re
from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from dashboard.exceptions import BadRequest, InvalidRule, PatternMatchesNothing, PatternMatchesUnreadable
from dashboard.models import AlertRule, Metric

PREVIEW_KEYS = 20  # keys shown in the live preview; the count covers them all
SUGGESTIONS = 5  # close keys offered for a pattern that matches nothing
SUGGEST_FROM_MAX = 20_000  # keys compared with difflib (a few ms each thousand); beyond, the first ones only
# Character pairs the suggestions of one pattern may compare in all (SequenceMatcher.ratio is quadratic:
# 20-150 ns a pair here, the slow end on keys of repeated characters): a 190-character glob over 20,000 long
# keys compared 1.3 G pairs, 68 s on the thread other requests share. Past it: the best among those compared.
SUGGEST_WORK_MAX = 10_000_000
EMPTY_MATCH_CODE = PatternMatchesNothing.code  # the form error's code is the API error's
UNREADABLE_MATCH_CODE = PatternMatchesUnreadable.code
RULE_FIELDS = [
    "name",
    "metric_pattern",
    "condition",
    "threshold",
    "threshold_high",
    "for_s",
    "nodata_s",
    "severity",
    "enabled",
    "webhook_url",
    "email_to",
]


class KeySet:
    """Metric keys, sorted, with a glob search that scans them all in one regex pass (keys have no newline).

    Matching key by key in Python cost ~10 ms per rule over 10,000 keys (the
    alerts screen matches every rule on every reload); one `re.findall` over
    the joined keys does the same in C.
    """

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        self.text = "\n".join(keys)

    def __len__(self) -> int:
        return len(self.keys)

    def matching(self, pattern: str) -> list[str]:
        """Return the keys a glob matches ('*' any run, '?' one character, [...] a set, as fnmatch), in order."""
        if not pattern or "\n" in pattern or not self.keys:
            return []
        if "[" in pattern:  # sets are rare in rules; fnmatch's own rules for them, key by key
            compiled = re.compile(fnmatch.translate(pattern))
            return [k for k in self.keys if compiled.match(k)]
        return re.findall(glob_regex(pattern), self.text)


def glob_regex(pattern: str) -> str:
    """Return a multiline regex for whole lines fitting a glob of '*' and '?' (no sets: see KeySet.matching).

    Like fnmatch.translate, the text between two stars is matched once, at its
    first place, inside an atomic group: `*a*a*a*a*a*b` written as plain
    `[^\n]*a[^\n]*a...` backtracks exponentially (1.4 s on one 100-character key
    at five stars, minutes at eight), and any signed-in user can send one to
    the preview. Taking each middle part at its earliest place never loses a
    match, because every part has a fixed length.
    """

    def literal(part: str) -> str:
        return "".join("[^\n]" if c == "?" else re.escape(c) for c in part)

    parts = pattern.split("*")
    if len(parts) == 1:
        return "(?m)^" + literal(pattern) + "$"
    head, *middle, tail = parts
    body = "".join(f"(?>[^\n]*?{literal(part)})" for part in middle if part)
    return "(?m)^" + literal(head) + body + "[^\n]*" + literal(tail) + "$"


def readable_keys(user) -> KeySet:
    """Return the keys of every metric the user may read (all of them for None: the admin, staff only)."""
    metrics = Metric.objects.all() if user is None else Metric.objects.visible_to(user)
    return KeySet(list(metrics.order_by("key").values_list("key", flat=True)))


def matching_keys(pattern: str, keys: KeySet) -> list[str]:
    """Return the keys a glob matches, in order."""
    return keys.matching(pattern)


def unreadable_matches(pattern: str, user) -> bool:
    """Return whether a glob matches a metric the user may not read (never for staff, who read everything)."""
    if user is None or user.is_staff or user.is_superuser:
        return False
    hidden = Metric.objects.exclude(pk__in=Metric.objects.visible_to(user).values("pk"))
    return bool(matching_keys(pattern, KeySet(list(hidden.order_by("key").values_list("key", flat=True)))))


class _Budget:
    """What is left of SUGGEST_WORK_MAX for one pattern's suggestions."""

    def __init__(self) -> None:
        self.left = SUGGEST_WORK_MAX

    def ratio(self, matcher: difflib.SequenceMatcher, cutoff: float) -> float | None:
        """Return the matcher's ratio when it may reach cutoff and the budget allows, else None."""
        if matcher.real_quick_ratio() < cutoff or matcher.quick_ratio() < cutoff:
            return None  # both are upper bounds of ratio(): nothing that would pass is skipped
        self.left -= len(matcher.a) * len(matcher.b)
        return matcher.ratio() if self.left >= 0 else None


def _close_matches(word: str, candidates: list[str], budget: _Budget, *, n: int, cutoff: float) -> list[str]:
    """Return difflib.get_close_matches(word, candidates, n, cutoff) within the budget."""
    matcher = difflib.SequenceMatcher()
    matcher.set_seq2(word)
    scored: list[tuple[float, str]] = []
    for key in candidates:
        if budget.left < 0:
            break
        matcher.set_seq1(key)
        ratio = budget.ratio(matcher, cutoff)
        if ratio is not None and ratio >= cutoff:
            scored.append((ratio, key))
    return [key for _, key in heapq.nlargest(n, scored)]


def suggest(pattern: str, keys: KeySet) -> list[str]:
    """Return up to SUGGESTIONS keys close to a pattern (for a glob, compared part by part with '*' taken from the key)."""
    candidates = keys.keys[:SUGGEST_FROM_MAX]
    budget = _Budget()
    found = _close_matches(pattern, candidates, budget, n=SUGGESTIONS, cutoff=0.6)
    if "*" in pattern or "?" in pattern:
        # iot.*.temprature: fill each wildcard part from a real key, then compare.
        parts = pattern.split(".")
        scored: dict[str, float] = {}
        for key in candidates:
            key_parts = key.split(".")
            if len(key_parts) != len(parts):
                continue
            filled = ".".join(k if "*" in p or "?" in p else p for p, k in zip(parts, key_parts, strict=True))
            if budget.left < 0:
                break  # suggestions are a courtesy: the closest among the keys compared so far
            ratio = budget.ratio(difflib.SequenceMatcher(None, filled, key), 0.8)
            if ratio is not None and ratio >= 0.8:
                shape = ".".join("*" if "*" in p or "?" in p else k for p, k in zip(parts, key_parts, strict=True))
                scored[shape] = max(scored.get(shape, 0.0), ratio)
        globbed = sorted(scored, key=lambda s: -scored[s])
        found = globbed[:SUGGESTIONS] + [k for k in found if k not in globbed]
    return found[:SUGGESTIONS]


def preview(pattern: str, user) -> dict:
    """Return what a pattern matches among the metrics the user may read: the count and the first keys."""
    keys = readable_keys(user)
    matched = matching_keys(pattern.strip(), keys)
    body: dict = {"pattern": pattern, "count": len(matched), "keys": matched[:PREVIEW_KEYS]}
    if not matched and pattern.strip():
        body["suggestions"] = suggest(pattern.strip(), keys)
    return body


class AlertRuleForm(forms.ModelForm):
    """An alert rule as written by a person: thresholds that fit the condition, a pattern that matches something.

    `user` narrows the metrics the pattern is checked against to those the
    author may read (None: every metric, as in the staff-only admin).
    """

    allow_empty_match = forms.BooleanField(
        required=False,
        label="Allow a pattern that matches nothing yet",
        help_text="Tick when the metrics will only appear later; otherwise a pattern that matches no metric is refused.",
    )

    webhook_url = forms.URLField(required=False, max_length=200, assume_scheme="https", label="Webhook URL")

    class Meta:
        model = AlertRule
        fields = RULE_FIELDS

    def __init__(self, *args, user=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.user = user
        self.suggestions: list[str] = []

    def clean_metric_pattern(self) -> str:
        pattern = self.cleaned_data["metric_pattern"].strip()
        if not pattern:
            raise ValidationError("write a metric key or a glob such as iot.*.temperature", code="required")
        if any(c.isspace() for c in pattern):
            raise ValidationError("a metric pattern has no spaces", code="invalid")
        return pattern

    def clean(self) -> dict:
        data = super().clean()
        condition = data.get("condition")
        threshold, high = data.get("threshold"), data.get("threshold_high")
        if condition in (AlertRule.Condition.ABOVE, AlertRule.Condition.BELOW, AlertRule.Condition.RATE):
            if threshold is None:
                self.add_error("threshold", ValidationError("this condition needs a threshold", code="required"))
        if condition == AlertRule.Condition.OUTSIDE:
            if threshold is None and high is None:
                self.add_error(
                    "threshold", ValidationError("an 'outside band' rule needs a low or a high edge", code="required")
                )
            elif threshold is not None and high is not None and high <= threshold:
                self.add_error(
                    "threshold_high", ValidationError("the high edge must be above the low edge", code="invalid")
                )
        pattern = data.get("metric_pattern")
        if pattern and not data.get("allow_empty_match"):
            keys = readable_keys(self.user)
            if not matching_keys(pattern, keys):
                self.suggestions = suggest(pattern, keys)
                hint = f"; did you mean {', '.join(self.suggestions)}?" if self.suggestions else ""
                self.add_error(
                    "metric_pattern",
                    ValidationError(
                        f"{pattern!r} matches no metric you may read{hint} "
                        "(tick 'allow a pattern that matches nothing yet' if its metrics will appear later)",
                        code=EMPTY_MATCH_CODE,
                    ),
                )
        if pattern and not self.has_error("metric_pattern") and unreadable_matches(pattern, self.user):
            # A rule's notifications carry every matched metric's key and value to targets its author
            # chooses: a pattern wider than the author's read rights would send out what they may not read.
            self.add_error(
                "metric_pattern",
                ValidationError(
                    f"{pattern!r} also matches metrics you may not read; narrow it to metrics you may read",
                    code=UNREADABLE_MATCH_CODE,
                ),
            )
        return data


def form_data(data: dict[str, Any]) -> dict[str, Any]:
    """Turn JSON values into what a Django form reads (None -> '', booleans as booleans)."""
    unknown = set(data) - set(AlertRuleForm.Meta.fields) - {"allow_empty_match"}
    if unknown:
        name = sorted(unknown)[0]
        raise BadRequest(f"unknown field {name!r}", field=name)
    out: dict[str, Any] = {}
    for name, value in data.items():
        if value is None:
            out[name] = ""
        elif name in ("enabled", "allow_empty_match"):
            if not isinstance(value, bool):
                raise BadRequest(f"{name} must be true or false", field=name)
            if value:
                out[name] = "on"
        elif isinstance(value, dict | list):
            raise BadRequest(f"{name} must be a plain value", field=name)
        else:
            out[name] = value
    return out


def form_error(form: AlertRuleForm) -> InvalidRule:
    """Return the API error of a rule that did not validate: its first field, every message, close keys."""
    errors = {name: [str(m) for m in messages] for name, messages in form.errors.items()}
    field = next(iter(errors))
    cls = InvalidRule
    if form.has_error("metric_pattern", EMPTY_MATCH_CODE):
        cls = PatternMatchesNothing
    elif form.has_error("metric_pattern", UNREADABLE_MATCH_CODE):
        cls = PatternMatchesUnreadable
    message = f"{field}: {errors[field][0]}" if field != "__all__" else errors[field][0]
    return cls(message, field=field, errors=errors, suggestions=form.suggestions)
