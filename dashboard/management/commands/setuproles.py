"""Create the viewer, editor and admin groups with their permissions; optionally put users in them."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.management.base import BaseCommand, CommandError

VIEW = [
    "view_source",
    "view_metric",
    "view_dashboard",
    "view_panel",
    "view_alertrule",
    "view_alertinstance",
    "view_alertevent",
]
EDIT = [
    *(f"{action}_{model}" for action in ("add", "change", "delete") for model in ("dashboard", "panel", "alertrule")),
    "change_alertinstance",  # acknowledge and silence
]
# Role name -> "app_label.codename" permissions; "dashboard.*" is every permission of the app.
ROLES: dict[str, list[str]] = {
    "viewer": [f"dashboard.{c}" for c in VIEW],
    "editor": [f"dashboard.{c}" for c in VIEW + EDIT],
    "admin": [
        "dashboard.*",
        *(f"auth.{a}_{m}" for a in ("view", "add", "change", "delete") for m in ("user", "group")),
    ],
}


def permissions_for(role: str) -> list[Permission]:
    perms: list[Permission] = []
    for spec in ROLES[role]:
        app_label, codename = spec.split(".", 1)
        query = Permission.objects.filter(content_type__app_label=app_label)
        perms.extend(query if codename == "*" else query.filter(codename=codename))
    return perms


def setup_roles() -> dict[str, Group]:
    """Create or update the role groups so each holds exactly its permissions; return them by name."""
    groups = {}
    for role in ROLES:
        group, _ = Group.objects.get_or_create(name=role)
        group.permissions.set(permissions_for(role))
        groups[role] = group
    return groups


class Command(BaseCommand):
    help = (
        "Create or update the role groups viewer, editor and admin (docs/security.md). Idempotent. "
        "--grant ROLE USERNAME puts a user in a role's group; admin also makes the user staff."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--grant", nargs=2, action="append", metavar=("ROLE", "USERNAME"), default=[])

    def handle(self, *args, **options) -> None:
        groups = setup_roles()
        for role, group in groups.items():
            self.stdout.write(f"role {role}: {group.permissions.count()} permissions")
        User = get_user_model()
        for role, username in options["grant"]:
            if role not in groups:
                raise CommandError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
            user = User.objects.filter(username=username).first()
            if user is None:
                raise CommandError(f"no user {username!r}; create it in the admin first")
            user.groups.add(groups[role])
            if role == "admin" and not user.is_staff:
                user.is_staff = True
                user.save(update_fields=["is_staff"])
            self.stdout.write(f"{username} is now {role}")
