"""The management commands behind `make run`, and the production deploy check."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import CommandError, call_command

BASE_DIR = Path(__file__).resolve().parents[2]


def run_command(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_ensure_demo_user_creates_both_logins_and_prints_them(monkeypatch):
    monkeypatch.delenv("DEMO_PASSWORD", raising=False)
    monkeypatch.delenv("DEMO_ADMIN_PASSWORD", raising=False)

    output = run_command("ensure_demo_user")

    assert "Created user 'demo' with password 'demo-chat-password'" in output
    assert "Created staff superuser 'admin' with password 'admin-chat-password'" in output
    demo = authenticate(username="demo", password="demo-chat-password")
    admin = authenticate(username="admin", password="admin-chat-password")
    assert demo is not None and not demo.is_staff
    assert admin is not None and admin.is_staff and admin.is_superuser


@pytest.mark.django_db
def test_ensure_demo_user_is_idempotent_and_resets_a_changed_password(monkeypatch):
    monkeypatch.setenv("DEMO_PASSWORD", "first-demo-password")
    run_command("ensure_demo_user")
    demo = get_user_model().objects.get(username="demo")
    demo.set_password("something-else")
    demo.save()

    output = run_command("ensure_demo_user")

    assert "Reset user 'demo' with password 'first-demo-password'" in output
    assert get_user_model().objects.filter(username__in=["demo", "admin"]).count() == 2
    assert authenticate(username="demo", password="first-demo-password") is not None


@pytest.mark.django_db
def test_ensure_demo_user_refuses_a_production_configured_site(settings):
    settings.ABLY_API_KEY = "prod.key:real-secret"
    with pytest.raises(CommandError, match="refusing to create logins with well-known passwords"):
        run_command("ensure_demo_user")
    assert not get_user_model().objects.exists()


def test_demo_banner_prints_the_url_and_logins_once_the_server_answers(live_server):
    output = run_command("demo_banner", "--url", live_server.url + "/", "--timeout", "30")
    assert f"Chat with Claude is running: {live_server.url}/" in output
    assert "demo / demo-chat-password" in output
    assert "admin / admin-chat-password  (staff: /admin/)" in output


def test_demo_banner_gives_up_with_a_clear_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/"
    with pytest.raises(CommandError, match=f"The web server at {url} did not answer within 0s"):
        run_command("demo_banner", "--url", url, "--timeout", "0")


def _deploy_check(**overrides: str) -> subprocess.CompletedProcess:
    """`manage.py check --deploy` in a fresh process, so settings read this environment."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DEBUG", "SECURE_HTTPS", "SECRET_KEY", "ALLOWED_HOSTS", "DATABASE_URL"}
    }
    environment.update(
        DEBUG="false",
        SECURE_HTTPS="true",
        SECRET_KEY=secrets.token_urlsafe(60),
        ALLOWED_HOSTS="chat.example.com",
        ABLY_API_KEY="prodapp.prodkey:production-secret",
        ANTHROPIC_API_KEY="sk-ant-production",
    )
    environment.update(overrides)
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=BASE_DIR,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_with_production_values():
    result = _deploy_check()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_flags_a_site_without_https():
    result = _deploy_check(SECURE_HTTPS="false")
    assert result.returncode != 0
    assert "security.W008" in result.stdout + result.stderr
