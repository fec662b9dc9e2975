"""Serving over TLS: Daphne's ssl endpoint with a self-signed certificate, HTTPS with HSTS and secure cookies, and wss."""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dashboard.testing import ROOT, free_port, manage, project_env

# Its server keeps its own SQLite file whatever the run's database: once is enough.
pytestmark = [pytest.mark.slow, pytest.mark.sqlite_only]


def self_signed(directory: Path) -> tuple[Path, Path]:
    """Write a certificate for localhost and 127.0.0.1 and its key; return (cert.pem, key.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory) -> Iterator[tuple[str, ssl.SSLContext, dict[str, str]]]:
    """Daphne serving only HTTPS/WSS on a loopback port, as docs/deployment.md shows; yield (base URL, trust, env)."""
    tmp_path = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(tmp_path)
    trust = ssl.create_default_context(cafile=str(cert))
    port = free_port()
    env = project_env(
        tmp_path,
        DEBUG="0",
        SECRET_KEY="tls-test-" + "k" * 50,
        TLS="1",
        ALLOWED_HOSTS="localhost,127.0.0.1",
        ADMIN_PASSWORD="tls-pass-123",
    )
    manage(env, "migrate", "--noinput")
    manage(env, "ensureadmin")
    endpoint = f"ssl:{port}:privateKey={key}:certKey={cert}:interface=127.0.0.1"
    process = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-e", endpoint, "monitor.asgi:application"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"https://localhost:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(process.stderr.read().decode()[-2000:])
            try:
                if httpx.get(base + "/healthz", verify=trust, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield base, trust, env
    finally:
        process.terminate()
        process.wait(10)


def https_login(base: str, trust: ssl.SSLContext) -> httpx.Response:
    """Sign in as the admin through the HTTPS login form (with the Referer Django's CSRF check wants); return the answer."""
    with httpx.Client(base_url=base, verify=trust) as client:
        page = client.get("/accounts/login/")
        assert re.search(r"csrftoken=[^;]+;.*Secure", page.headers["set-cookie"])
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        return client.post(
            "/accounts/login/",
            data={"username": "admin", "password": "tls-pass-123", "csrfmiddlewaretoken": token},
            headers={"Referer": base + "/accounts/login/"},
        )


def test_https_serves_pages_with_hsts_and_secure_cookies(tls_server) -> None:
    base, trust, _ = tls_server
    with httpx.Client(base_url=base, verify=trust) as client:
        health = client.get("/healthz")
        assert health.status_code == 200
        assert health.headers["Strict-Transport-Security"].startswith("max-age=31536000")
    login = https_login(base, trust)
    assert login.status_code == 302, login.text[:300]
    session_cookie = next(v for k, v in login.headers.multi_items() if k == "set-cookie" and "sessionid=" in v)
    assert "Secure" in session_cookie and "HttpOnly" in session_cookie


def test_an_untrusted_certificate_is_refused_by_a_verifying_client(tls_server) -> None:
    base, _, _ = tls_server
    with pytest.raises(httpx.ConnectError):
        httpx.get(base + "/healthz")


async def test_the_live_socket_works_over_wss(tls_server) -> None:
    base, trust, _ = tls_server
    cookie = f"sessionid={https_login(base, trust).cookies['sessionid']}"
    url = base.replace("https://", "wss://") + "/ws/live/"
    async with websockets.connect(url, ssl=trust, origin=base, additional_headers={"Cookie": cookie}) as ws:
        hello = json.loads(await ws.recv())
        assert hello["type"] == "hello"
        await ws.send(json.dumps({"type": "ping", "id": 1}))
        while (frame := json.loads(await ws.recv()))["type"] != "pong":
            pass
        assert frame["id"] == 1
    # Without the session the secure socket still refuses the reader.
    async with websockets.connect(url, ssl=trust, origin=base) as ws:
        assert json.loads(await ws.recv())["code"] == "not_authenticated"
