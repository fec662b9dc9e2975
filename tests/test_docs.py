"""The documentation names what the code does, and the code does what the documentation names.

In the manner of Datasette's documentation tests: each check below reads the
code for a kind of thing an operator or a client author depends on (settings,
management commands, endpoints, frames, close and error codes, background
jobs) and fails when one is missing from the docs, or when the docs name one
the code no longer has. Fixing a failure means documenting the new thing
where the message says, or removing the stale mention.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CODE_DIRS = ("monitor", "dashboard", "collectors")
DOCS = sorted((ROOT / "docs").glob("*.md"))

# Variables read by code but deliberately not operator settings: each with the reason.
NOT_SETTINGS = {
    "DJANGO_SETTINGS_MODULE": "Django's own; set by manage.py and monitor/asgi.py",
    "PYTHONPATH": "the interpreter's",
    "STATE_DIRECTORY": "systemd's (StateDirectory=): where pulseboard-agent keeps its spool by default (docs/ingest.md)",
    "XDG_STATE_HOME": "the XDG base directories': pulseboard-agent's default spool outside systemd (docs/ingest.md)",
}


def code_files() -> list[Path]:
    return [p for d in CODE_DIRS for p in (ROOT / d).rglob("*.py") if "migrations" not in p.parts]


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def all_docs() -> str:
    return "\n".join(read(p) for p in [*DOCS, ROOT / "README.md"])


_ENV_READ = re.compile(
    r"""(?:env_(?:str|bool|int|float|list|url)\(\s*|os\.environ\.get\(\s*|os\.environ\[\s*|os\.getenv\(\s*)["']([A-Z][A-Z0-9_]+)["']"""
)


def settings_read_by_code() -> set[str]:
    names = {m for path in code_files() for m in _ENV_READ.findall(read(path))}
    return names - set(NOT_SETTINGS)


def env_example_names() -> set[str]:
    return set(re.findall(r"^#?\s?([A-Z][A-Z0-9_]+)=", read(ROOT / ".env.example"), re.M))


def readme_table_names() -> set[str]:
    """Return the variables named in the first cell of the README's table rows."""
    cells = re.findall(r"^\|([^|\n]*)\|", read(ROOT / "README.md"), re.M)
    return {name for cell in cells for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", cell)}


def test_every_setting_the_code_reads_is_in_env_example_and_the_readme_table() -> None:
    read_by_code = settings_read_by_code()
    assert read_by_code, "the scan found no settings at all: the pattern is broken"
    missing_example = sorted(read_by_code - env_example_names())
    missing_readme = sorted(read_by_code - readme_table_names())
    assert not missing_example, f"add these to .env.example with their default and meaning: {missing_example}"
    assert not missing_readme, f"add these to the README's Configuration table: {missing_readme}"


def test_every_setting_in_env_example_is_read_by_the_code() -> None:
    stale = sorted(env_example_names() - settings_read_by_code() - set(NOT_SETTINGS))
    assert not stale, f".env.example names variables no code reads (remove them or read them): {stale}"


def management_commands() -> set[str]:
    return {p.stem for p in (ROOT / "dashboard" / "management" / "commands").glob("*.py") if p.stem != "__init__"}


def test_every_management_command_has_a_docs_entry() -> None:
    docs = all_docs()
    undocumented = sorted(c for c in management_commands() if not re.search(rf"manage\.py {c}\b", docs))
    assert not undocumented, f"document 'python manage.py <command>' for: {undocumented}"


def test_every_command_the_docs_name_exists() -> None:
    named = set(re.findall(r"manage\.py ([a-z_]+)", all_docs()))
    from django.core.management import get_commands

    # Commands of Django and of installed apps (django-axes' axes_reset_username, ...).
    others = {name for name, app in get_commands().items() if app != "dashboard"}
    stale = sorted(named - management_commands() - others)
    assert not stale, f"the docs name management commands that do not exist: {stale}"


def url_paths() -> set[str]:
    """Return each route's fixed prefix (up to its first converter), with a leading slash."""
    paths = set()
    route_files = [ROOT / "monitor" / "urls.py", *sorted((ROOT / "dashboard").rglob("urls.py"))]
    for urls in [*route_files, *sorted((ROOT / "dashboard").rglob("routing.py"))]:
        for route in re.findall(r"(?:re_)?path\(\s*r?[\"']([^\"']*)[\"']", read(urls)):
            fixed = re.split(r"[<(^$]", route, maxsplit=1)[0]
            if fixed and fixed not in ("accounts/", "admin/"):
                paths.add("/" + fixed.lstrip("/"))
    return paths


def test_every_endpoint_is_documented() -> None:
    docs = all_docs()
    assert url_paths(), "no routes found: the pattern is broken"
    undocumented = sorted(p for p in url_paths() if p not in docs)
    assert not undocumented, f"document these endpoints in docs/*.md: {undocumented}"


def close_codes() -> dict[str, int]:
    return {
        name: int(code)
        for path in code_files()
        for name, code in re.findall(r"^(CLOSE_[A-Z_]+)\s*=\s*(\d{4})", read(path), re.M)
    }


def documented_close_codes() -> set[int]:
    """Return the close codes of docs/protocol.md's close-code table (rows starting `| 1xxx |` or `| 4xxx |`)."""
    codes = re.findall(r"^\|\s*([14]\d{3})\s*\|", read(ROOT / "docs" / "protocol.md"), re.M)
    return {int(c) for c in codes} - {1000}  # 1000, a normal close, is the client's as much as ours


def test_every_close_code_is_in_the_protocol_doc_and_back() -> None:
    codes = close_codes()
    assert codes, "no CLOSE_ constants found: the pattern is broken"
    documented = documented_close_codes()
    missing = sorted(f"{name}={code}" for name, code in codes.items() if code not in documented)
    assert not missing, f"docs/protocol.md's close-code table must have a row for: {missing}"
    stale = sorted(documented - set(codes.values()))
    assert not stale, f"docs/protocol.md names close codes the server never uses: {stale}"


def error_codes() -> set[str]:
    codes = set()
    for path in code_files():
        text = read(path)
        codes |= set(re.findall(r"error_frame\(\s*[\"']([a-z_]+)[\"']", text))
        codes |= set(re.findall(r"^\s+code = [\"']([a-z_]+)[\"']", text, re.M))
    return codes


def test_every_error_code_is_documented() -> None:
    docs = all_docs()
    assert error_codes(), "no error codes found: the pattern is broken"
    undocumented = sorted(c for c in error_codes() if f"`{c}`" not in docs)
    assert not undocumented, (
        f"document these error codes (in backticks) in docs/protocol.md or docs/ingest.md: {undocumented}"
    )


def server_frame_types() -> set[str]:
    types = set()
    for path in (ROOT / "dashboard").rglob("*.py"):
        types |= set(re.findall(r"[\"']type[\"']\s*:\s*[\"']([a-z_]+)[\"']", read(path)))
        types |= set(re.findall(r"'\"type\":\"([a-z_]+)\"", read(path)))
    return types


def test_every_frame_type_is_documented_in_the_protocol_doc() -> None:
    protocol = read(ROOT / "docs" / "protocol.md")
    types = server_frame_types()
    assert {"hello", "data", "subscribed"} <= types, "frame scan found too little: the pattern is broken"
    undocumented = sorted(t for t in types if f'"type": "{t}"' not in protocol and f"### {t}" not in protocol)
    assert not undocumented, f"docs/protocol.md must show each frame type (a heading or an example): {undocumented}"


def background_jobs() -> list[str]:
    text = read(ROOT / "dashboard" / "background.py")
    block = re.search(r"^JOBS[^=]*=\s*\[(.*?)\]", text, re.S | re.M)
    assert block, "dashboard/background.py has no JOBS list"
    return re.findall(r"[\"']([a-z_.]+)[\"']", block.group(1))


def test_every_background_job_is_documented() -> None:
    docs = read(ROOT / "docs" / "architecture.md") + read(ROOT / "docs" / "deployment.md")
    jobs = background_jobs()
    assert jobs
    undocumented = sorted(j for j in jobs if j.rsplit(".", 1)[1] not in docs)
    assert not undocumented, f"name these background jobs in docs/architecture.md or docs/deployment.md: {undocumented}"


@pytest.mark.parametrize("doc", [p.name for p in DOCS])
def test_every_file_a_doc_names_exists(doc: str) -> None:
    text = read(ROOT / "docs" / doc)
    named = set(
        re.findall(r"`((?:dashboard|collectors|monitor|tests|bench|scripts)/[A-Za-z0-9_/.-]+\.(?:py|js|sh|md))`", text)
    )
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"docs/{doc} names files that do not exist: {missing}"


def makefile_targets() -> set[str]:
    """Return the Makefile's documented targets (those with a `## help` comment)."""
    return set(re.findall(r"^([a-z][a-z-]*):[^#\n]*##", read(ROOT / "Makefile"), re.M))


def test_every_make_target_is_documented_and_every_documented_one_exists() -> None:
    docs = all_docs()
    targets = makefile_targets()
    assert {"run", "test", "test-fast", "soak"} <= targets, "the Makefile scan found too little: the pattern is broken"
    undocumented = sorted(t for t in targets if not re.search(rf"\bmake {t}(?![a-z-])", docs))
    assert not undocumented, f"name these in the README (or docs/*.md) as `make <target>`: {undocumented}"
    named = set(re.findall(r"`make ([a-z][a-z-]*)", docs))
    named |= set(re.findall(r"^(?:[A-Z_]+=\S+ )*make ([a-z][a-z-]*)", docs, re.M))
    stale = sorted(named - set(re.findall(r"^([a-z][a-z-]*):", read(ROOT / "Makefile"), re.M)))
    assert not stale, f"the docs name make targets the Makefile does not have: {stale}"
