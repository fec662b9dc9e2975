"""The agent installs and runs on a host without Django: `pip install ./collectors`, then `pulseboard-agent`.

The slow tests build a fresh virtual environment (no system site-packages,
so no Django), install the agent from a copy of the repository's
`collectors/` directory with pip exactly as docs/ingest.md says, and run it
against a real Daphne. The copy keeps setuptools' in-tree `build/` and
`*.egg-info` out of the working tree; it is the same files. pip resolves the
agent's declared dependencies through this machine's pip configuration (the
local wheel directories and indexes, then PyPI), constrained to the versions
installed in the project's own venv, so the agent is tested with the
versions CI tests the server with and nothing undeclared can slip in.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from dashboard.testing import ROOT, login_cookies, manage, project_env, running_server

INSTALL_TIMEOUT_S = 600  # pip may download from PyPI
WAIT_TIMEOUT_S = 60.0
# Every module of the package, so that each one is proven importable without Django.
BLOCK_DJANGO = """
import importlib.abc, sys

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("django", "dashboard", "monitor", "channels", "daphne"):
            raise ImportError(f"the agent imported {name}")
        return None

sys.meta_path.insert(0, Refuse())
"""


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def collectors_modules() -> list[str]:
    return sorted(f"collectors.{p.stem}" for p in (ROOT / "collectors").glob("*.py") if p.stem != "__main__")


def test_every_collectors_module_imports_with_django_and_dashboard_refused() -> None:
    code = BLOCK_DJANGO + (
        "import importlib\n"
        f"for name in {collectors_modules()!r}:\n"
        "    importlib.import_module(name)\n"
        "from collectors import registry\n"
        "for kind in registry.COLLECTORS:\n"
        "    registry.collector_class(kind)\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_the_server_and_the_agent_share_one_reading_type_and_one_error() -> None:
    from collectors.exceptions import InvalidReading as AgentInvalidReading
    from collectors.reading import Reading as AgentReading
    from collectors.reading import now_us as agent_now_us
    from dashboard import exceptions, timeutil, validation

    assert validation.Reading is AgentReading
    assert exceptions.InvalidReading is AgentInvalidReading
    assert timeutil.now_us is agent_now_us
    assert AgentReading.__struct_config__.gc is False


def test_runcollectors_is_the_same_agent_with_in_process_added(monkeypatch: pytest.MonkeyPatch) -> None:
    from django.core.management import call_command
    from django.core.management.base import CommandError

    from dashboard.management.commands.runcollectors import Command

    monkeypatch.delenv("PULSEBOARD_SERVER", raising=False)
    with pytest.raises(CommandError, match=r"^say where to send readings: .* or --in-process$"):
        call_command("runcollectors")
    usage = Command().create_parser("manage.py", "runcollectors").format_help()
    for option in ("--config", "--server", "--token-file", "--spool", "--in-process", "--requeue-dead"):
        assert option in usage, option


# --- A fresh virtual environment without Django -------------------------------------------------


def shared_venv_constraints(path: Path) -> Path:
    """Write the project venv's installed versions as pip constraints (what the agent is tested with)."""
    pins = {
        dist.metadata["Name"].lower(): dist.version
        for dist in importlib.metadata.distributions()
        if dist.metadata["Name"] and dist.metadata["Name"].lower() != "pulseboard-agent"
    }
    path.write_text("".join(f"{name}=={version}\n" for name, version in sorted(pins.items())))
    return path


@pytest.fixture(scope="module")
def agent_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return the bin/ directory of a new venv holding only the agent package and its dependencies."""
    base = tmp_path_factory.mktemp("agent-venv")
    source = base / "checkout" / "collectors"
    shutil.copytree(ROOT / "collectors", source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    venv = base / "venv"
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    # pip from the project venv installs into the new one (--python), so the new one needs no pip of its own.
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--disable-pip-version-check",
            "-c",
            str(shared_venv_constraints(base / "constraints.txt")),
            "./collectors",
        ],
        cwd=source.parent,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
    )
    assert install.returncode == 0, (
        f"pip install ./collectors failed:\n{install.stdout[-3000:]}\n{install.stderr[-3000:]}"
    )
    print(f"fresh venv with the agent installed in {time.monotonic() - started:.1f} s")
    return venv / "bin"


def agent_env(home: Path, **extra: str) -> dict[str, str]:
    """A watched host's environment: no project on the path, no Django settings."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8"}
    env.update(extra)
    return env


@pytest.mark.slow
def test_the_fresh_venv_has_no_django_and_its_collectors_package_is_the_installed_one(
    agent_venv: Path, tmp_path: Path
) -> None:
    python = str(agent_venv / "python")
    no_django = subprocess.run(
        [python, "-c", "import django"], cwd=tmp_path, env=agent_env(tmp_path), capture_output=True
    )
    assert no_django.returncode != 0 and b"No module named 'django'" in no_django.stderr
    where = subprocess.run(
        [python, "-c", "import collectors.agent, collectors.system; print(collectors.agent.__file__)"],
        cwd=tmp_path,
        env=agent_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(agent_venv.parent), where.stdout


@pytest.mark.slow
def test_pulseboard_agent_help_explains_its_options(agent_venv: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(agent_venv / "pulseboard-agent"), "--help"],
        cwd=tmp_path,
        env=agent_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    for option in (
        "--config",
        "--server",
        "--token-file",
        "--spool",
        "--requeue-dead",
        "PULSEBOARD_AGENT_TOKEN",
        "PULSEBOARD_SERVER",
    ):
        assert option in result.stdout, option
    assert "--in-process" not in result.stdout  # that mode needs the server's database: manage.py runcollectors


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("", "say where to send readings"),
        ('[agent]\nserver = "http://127.0.0.1:9"\n', "no agent token: set PULSEBOARD_AGENT_TOKEN"),
        ('[agent]\nmode = "in-process"\n', "run `manage.py runcollectors --in-process` on the server"),
        ('[[collectors]]\nkind = "nope"\n', "unknown collector kind 'nope'"),
    ],
)
def test_a_config_it_cannot_run_is_refused_with_a_reason(
    agent_venv: Path, tmp_path: Path, config: str, message: str
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(config)
    result = subprocess.run(
        [str(agent_venv / "pulseboard-agent"), "--config", str(path)],
        cwd=tmp_path,
        env=agent_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "pulseboard-agent: error:" in result.stderr and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_requeue_dead_with_no_dead_letters_says_so_and_exits_0(agent_venv: Path, tmp_path: Path) -> None:
    spool = tmp_path / "spool.sqlite3"
    result = subprocess.run(
        [
            str(agent_venv / "pulseboard-agent"),
            "--server",
            "http://127.0.0.1:9",
            "--spool",
            str(spool),
            "--requeue-dead",
        ],
        cwd=tmp_path,
        env=agent_env(tmp_path, PULSEBOARD_AGENT_TOKEN="not-needed-for-an-empty-spool"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"no dead letters in {spool}; nothing to send" in result.stdout
    assert "Running" not in result.stdout  # no collectors were started


@pytest.mark.slow
@pytest.mark.sqlite_only  # the server keeps its own SQLite file: the PostgreSQL pass would only repeat this
def test_the_installed_agent_ships_readings_to_a_real_server_with_a_token_from_the_environment(
    agent_venv: Path, tmp_path: Path
) -> None:
    env = project_env(tmp_path, ADMIN_PASSWORD="agent-pkg-pass-123")
    with running_server(env) as server:
        manage(env, "ensureadmin")
        token_file = tmp_path / "agent-token"
        manage(env, "issuetoken", "package agent", "--output", str(token_file))
        config = tmp_path / "agent.toml"
        config.write_text(
            f"""
[agent]
server = "{server.url}"
flush_interval_s = 0.2
health_interval_s = 1.0
name = "pkg-test"

[[collectors]]
kind = "counter"
source = "pkg.counter"
metric = "n"
per_batch = 10
interval_s = 0.05
limit = 200
"""
        )
        host = tmp_path / "host"
        host.mkdir()
        spool = host / "spool" / "agent.sqlite3"
        agent = subprocess.Popen(
            [str(agent_venv / "pulseboard-agent"), "--config", str(config), "--spool", str(spool)],
            cwd=host,
            env=agent_env(host, PULSEBOARD_AGENT_TOKEN=token_file.read_text().strip()),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        cookies = login_cookies(server, "admin", "agent-pkg-pass-123")

        def series(key: str) -> dict | None:
            response = httpx.get(
                server.url + "/api/v1/series",
                params={"metric": key, "from": "-1h", "to": "+1h", "points": 10_000},
                cookies=cookies,
                timeout=10,
            )
            # 400 "does not exist" until the agent's first batch has created the metric.
            assert response.status_code in (200, 400), response.text[:500]
            if response.status_code == 400:
                return None
            found = response.json()["series"]
            return found[0] if found else None

        def counted(key: str) -> int:
            assert agent.poll() is None, agent.communicate()[1][-3000:]
            found = series(key)
            return sum(found["count"]) if found else 0

        try:
            wait_for(lambda: counted("pkg.counter.n") >= 200, "the counter's 200 readings")
            wait_for(lambda: counted("agent.pkg-test.heartbeat") >= 1, "the agent's own heartbeat")
        finally:
            agent.send_signal(signal.SIGTERM)
            out, err = agent.communicate(timeout=30)
        stored = series("pkg.counter.n")
        assert sum(stored["count"]) == 200  # each value exactly once
        assert min(stored["min"]) == 0 and max(stored["max"]) == 199
        assert agent.returncode == 0, err[-3000:]
        assert f"Running 1 collectors (counter) -> {server.url}" in out
        assert "Traceback" not in err and " ERROR " not in err, err[-3000:]
        assert spool.exists()  # --spool was honoured
