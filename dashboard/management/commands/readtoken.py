"""Create, list and revoke read tokens: how scripts and other tools read Pulseboard without a browser."""

from __future__ import annotations

import argparse

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from dashboard.models import ReadToken


class Command(BaseCommand):
    help = (
        "Manage read tokens. A read token reads exactly what its user may read (optionally narrowed to "
        "source patterns) through the series, metrics and export APIs, the live WebSocket and the SSE "
        "stream, sent as 'Authorization: Bearer <secret>'. It never writes. The secret is printed once; "
        "only its hash is stored. Examples:\n"
        "  manage.py readtoken create alice 'grafana on ops-1' --sources 'iot.*,host.*'\n"
        "  manage.py readtoken list [--user alice]\n"
        "  manage.py readtoken revoke <lookup>"
    )

    def create_parser(self, prog_name: str, subcommand: str, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the examples' lines
        return parser

    def add_arguments(self, parser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="{create,list,revoke}")
        create = sub.add_parser("create", help="create a token for a user and print its secret once")
        create.add_argument("username", help="the user whose read permissions the token carries")
        create.add_argument("name", help="a name operators will recognise, e.g. 'grafana on ops-1'")
        create.add_argument(
            "--sources", default="*", help="comma-separated globs of source slugs it may read (default: all)"
        )
        listing = sub.add_parser("list", help="list tokens (never their secrets)")
        listing.add_argument("--user", help="only this user's tokens")
        revoke = sub.add_parser("revoke", help="revoke a token by its lookup (the list's second column)")
        revoke.add_argument("lookup")

    def handle(self, *args, action: str, **options) -> None:
        getattr(self, f"handle_{action}")(**options)

    def handle_create(self, *, username: str, name: str, sources: str, **options) -> None:
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user {username!r}; create it in the admin first")
        if not user.is_active:
            raise CommandError(f"user {username!r} is deactivated; its tokens would read nothing")
        patterns = "\n".join(p.strip() for p in sources.split(",") if p.strip()) or "*"
        token, secret = ReadToken.issue(user, name, patterns)
        self.stdout.write(f"Read token {token.name!r} ({token.lookup}) for {username} created.")
        self.stdout.write(f"Secret (shown once; send as 'Authorization: Bearer <secret>'): {secret}")

    def handle_list(self, *, user: str | None, **options) -> None:
        tokens = ReadToken.objects.select_related("user")
        if user:
            tokens = tokens.filter(user__username=user)
        for token in tokens:
            state = f"revoked {token.revoked_at:%Y-%m-%d %H:%M}" if token.revoked_at else "active"
            used = f"{token.last_used:%Y-%m-%d %H:%M}" if token.last_used else "never"
            sources = ",".join(token.patterns())
            self.stdout.write(f"{token.user.username}\t{token.lookup}\t{token.name}\t{sources}\t{state}\tused {used}")

    def handle_revoke(self, *, lookup: str, **options) -> None:
        count = ReadToken.objects.filter(lookup=lookup, revoked_at=None).update(revoked_at=timezone.now())
        if not count:
            raise CommandError(f"no active read token with lookup {lookup!r} (see 'readtoken list')")
        self.stdout.write(f"Revoked read token {lookup}.")
