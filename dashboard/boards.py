"""Board actions (issue #13 item 5): create, rename, duplicate and delete a dashboard, and who may.

Rights, checked by the JSON API (dashboard/pages/dashboards.py) whatever the page shows:
- create (and duplicate, and import a new board): the "add dashboard" model
  permission; the new board's owner is its creator;
- rename: whoever may edit the board's layout (Dashboard.can_edit: staff,
  the owner, a member of its editor groups);
- delete: an editor of the board who is its owner or holds the "delete
  dashboard" model permission.
A duplicate keeps the original's viewer and editor groups, so copying a
board never shows it to more people than the original.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils.text import slugify

from dashboard.exceptions import BadRequest
from dashboard.models import Dashboard, Panel

RESERVED_SLUGS = {"import"}  # /api/v1/dashboards/import is the import endpoint
MAX_TITLE = 200
MAX_DESCRIPTION = 2000


def _person(user) -> bool:
    return bool(getattr(user, "is_authenticated", False)) and getattr(user, "share_link", None) is None


def may_create(user) -> bool:
    """Whether the user may add dashboards (new, duplicate, import)."""
    return _person(user) and (user.is_staff or user.has_perm("dashboard.add_dashboard"))


def may_delete(user, board: Dashboard) -> bool:
    """Whether the user may delete this board: an editor who owns it or holds the delete permission."""
    if not _person(user) or not board.can_edit(user):
        return False
    return board.owner_id == user.id or user.has_perm("dashboard.delete_dashboard")


def rights(user, board: Dashboard) -> dict[str, bool]:
    """What the page may offer on this board (the API checks again on every write)."""
    return {
        "can_rename": _person(user) and board.can_edit(user),
        "can_duplicate": may_create(user),
        "can_delete": may_delete(user, board),
    }


def clean_title(value: Any, field: str = "title") -> str:
    if not isinstance(value, str) or not value.strip() or len(value.strip()) > MAX_TITLE:
        raise BadRequest(f"{field} must be 1-{MAX_TITLE} characters, not blank", field=field)
    return value.strip()


def clean_description(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION:
        raise BadRequest(f"description must be text of at most {MAX_DESCRIPTION} characters", field="description")
    return value.strip()


def free_slug(wanted: str) -> str:
    """Return `wanted` or `wanted-2`, `-3`... whichever no dashboard has yet."""
    base = slugify(wanted)[:90] or "board"
    if base in RESERVED_SLUGS:
        base += "-board"
    slug, n = base, 1
    while Dashboard.objects.filter(slug=slug).exists():
        n += 1
        slug = f"{base}-{n}"
    return slug


def create_board(user, title: Any, description: Any = "", slug: Any = None) -> Dashboard:
    """Create an empty board owned by `user`; `slug` if given must be free, else one is made from the title."""
    title = clean_title(title)
    if slug is not None:
        if not isinstance(slug, str) or slugify(slug) != slug or not 1 <= len(slug) <= 100:
            raise BadRequest("slug must be 1-100 lowercase letters, digits, - or _", field="slug")
        if slug in RESERVED_SLUGS or Dashboard.objects.filter(slug=slug).exists():
            raise BadRequest(f"a dashboard {slug!r} exists already: pick another slug", field="slug")
    return Dashboard.objects.create(
        title=title, description=clean_description(description), slug=slug or free_slug(title), owner=user
    )


def rename_board(board: Dashboard, title: Any = None, description: Any = None) -> Dashboard:
    """Change a board's title and/or description (its slug, and so its links, stay)."""
    if title is None and description is None:
        raise BadRequest("send a title or a description", field="title")
    if title is not None:
        board.title = clean_title(title)
    if description is not None:
        board.description = clean_description(description)
    board.save(update_fields=["title", "description", "updated"])
    return board


def duplicate_board(board: Dashboard, user, title: Any = None) -> Dashboard:
    """Copy a board with its panels, variables and groups under a new slug, owned by `user`."""
    title = clean_title(title if title is not None else f"{board.title} (copy)")
    with transaction.atomic():
        copy = Dashboard.objects.create(
            title=title,
            description=board.description,
            slug=free_slug(title),
            owner=user,
            variables=board.variables,
        )
        copy.viewer_groups.set(board.viewer_groups.all())
        copy.editor_groups.set(board.editor_groups.all())
        fields = ("title", "kind", "metrics", "options", "x", "y", "w", "h")
        Panel.objects.bulk_create(
            [Panel(dashboard=copy, **{f: getattr(p, f) for f in fields}) for p in board.panels.all()]
        )
    return copy


def delete_board(board: Dashboard) -> None:
    """Delete a board, its panels and its share links."""
    board.delete()


def summary(board: Dashboard, user) -> dict[str, Any]:
    """A board as the JSON API lists it."""
    return {
        "slug": board.slug,
        "title": board.title,
        "description": board.description,
        "url": f"/d/{board.slug}/",
        "owner": board.owner.get_username() if board.owner_id else None,
        "panels": board.panels.count(),
        **rights(user, board),
    }
