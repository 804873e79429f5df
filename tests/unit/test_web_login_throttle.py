"""Login throttling (django-axes): per account and per client IP, a clear message on the
product's own log-in page, and staff can unlock."""

from __future__ import annotations

import pytest
from axes.models import AccessAttempt
from django.contrib.auth import authenticate
from django.core.management import call_command
from django.urls import reverse

pytestmark = pytest.mark.django_db

ALICE_PASSWORD = "alice-password-1"
BOB_PASSWORD = "bob-password-1"
LOCKED = "Too many failed log-in attempts"
OFFICE, HOME = "203.0.113.7", "198.51.100.9"


@pytest.fixture(autouse=True)
def _plain_static_files(settings):
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


def log_in(client, username: str, password: str, ip: str = OFFICE):
    return client.post(
        reverse("login"), {"username": username, "password": password}, REMOTE_ADDR=ip
    )


def logged_in(client) -> bool:
    return "_auth_user_id" in client.session


def fail(client, username: str, times: int, ip: str = OFFICE) -> None:
    for _ in range(times):
        response = log_in(client, username, "wrong-password", ip)
        assert not logged_in(client)
        assert response.status_code in (200, 429)


def test_forty_wrong_passwords_then_the_right_one_does_not_log_in(client, alice):
    fail(client, "alice", 40)
    response = log_in(client, "alice", ALICE_PASSWORD)
    assert not logged_in(client)
    assert response.status_code == 429
    page = response.content.decode()
    # The product's own page, with the form, saying what happened and what to do.
    assert 'id="login-heading"' in page and 'name="password"' in page
    assert LOCKED in page and "15 minutes" in page and "administrator" in page
    assert 'value="alice"' in page


def test_below_the_limit_the_right_password_logs_in(client, alice, settings):
    settings.LOGIN_FAILURE_LIMIT = 3
    fail(client, "alice", 2)
    response = log_in(client, "alice", ALICE_PASSWORD)
    assert response.status_code == 302 and logged_in(client)


def test_logging_into_an_own_account_does_not_reset_the_count(client, alice, bob, settings):
    """An attacker with an account of their own cannot wipe the count between guesses."""
    settings.LOGIN_FAILURE_LIMIT = 5
    fail(client, "alice", 4)
    assert log_in(client, "bob", BOB_PASSWORD).status_code == 302
    client.logout()
    fail(client, "alice", 1)
    response = log_in(client, "alice", ALICE_PASSWORD, ip=HOME)
    assert response.status_code == 429 and not logged_in(client)


def test_the_limit_is_per_account_and_per_ip(client, alice, bob, settings):
    settings.LOGIN_FAILURE_LIMIT = 5
    fail(client, "alice", 5, ip=OFFICE)
    # Per IP: from the same address, another account is throttled too ...
    response = log_in(client, "bob", BOB_PASSWORD, ip=OFFICE)
    assert response.status_code == 429 and LOCKED in response.content.decode()
    assert not logged_in(client)
    # ... while that account is fine from elsewhere,
    assert log_in(client, "bob", BOB_PASSWORD, ip=HOME).status_code == 302
    client.logout()
    # per account: the attacked account stays locked from every address.
    response = log_in(client, "alice", ALICE_PASSWORD, ip=HOME)
    assert response.status_code == 429 and not logged_in(client)


def test_guessing_across_many_accounts_from_one_ip_is_stopped(client, settings):
    settings.LOGIN_FAILURE_LIMIT = 5
    for index in range(5):
        log_in(client, f"user{index}", "guess")
    response = log_in(client, "someone-else", "guess")
    assert response.status_code == 429


def test_staff_unlock_an_account_and_an_ip_in_the_admin(client, alice, django_user_model):
    fail(client, "alice", 10)
    assert log_in(client, "alice", ALICE_PASSWORD).status_code == 429
    staff = django_user_model.objects.create_superuser("root", "root@example.com", "root-pass-1")
    admin = type(client)()
    admin.force_login(staff)
    changelist = reverse("admin:axes_accessattempt_changelist")
    listing = admin.get(changelist)
    assert listing.status_code == 200 and "alice" in listing.content.decode()
    attempts = list(AccessAttempt.objects.values_list("pk", flat=True))
    response = admin.post(
        changelist,
        {"action": "delete_selected", "_selected_action": attempts, "post": "yes"},
    )
    assert response.status_code == 302
    assert not AccessAttempt.objects.exists()
    response = log_in(client, "alice", ALICE_PASSWORD)
    assert response.status_code == 302 and logged_in(client)


def test_the_reset_command_unlocks_an_account(client, alice):
    fail(client, "alice", 10, ip=OFFICE)
    call_command("axes_reset_username", "alice")
    # The account is free again (tried from elsewhere: the office IP has a count of its own).
    assert log_in(client, "alice", ALICE_PASSWORD, ip=HOME).status_code == 302


def test_a_wrong_password_below_the_limit_shows_the_usual_error(client, alice):
    response = log_in(client, "alice", "wrong-password")
    assert response.status_code == 200
    page = response.content.decode()
    assert LOCKED not in page and "enter a correct username and password" in page


def test_authenticate_without_a_request_is_not_throttled(alice, settings):
    """Management commands (ensure_demo_user) check passwords with no request and no IP."""
    settings.LOGIN_FAILURE_LIMIT = 1
    assert authenticate(username="alice", password="wrong") is None
    assert authenticate(username="alice", password=ALICE_PASSWORD) == alice


def test_the_client_ip_comes_from_the_trusted_proxy_only(client, alice, bob, settings):
    settings.LOGIN_FAILURE_LIMIT = 3
    # No proxy configured: a forged X-Forwarded-For does not give a fresh address per attempt.
    for index in range(3):
        client.post(
            reverse("login"),
            {"username": f"nobody{index}", "password": "x"},
            REMOTE_ADDR=OFFICE,
            HTTP_X_FORWARDED_FOR=f"10.0.0.{index}",
        )
    assert log_in(client, "bob", BOB_PASSWORD, ip=OFFICE).status_code == 429
    # Behind one proxy: the address it saw (the header's last entry) is the client's.
    settings.LOGIN_TRUSTED_PROXY_COUNT = 1
    response = client.post(
        reverse("login"),
        {"username": "alice", "password": ALICE_PASSWORD},
        REMOTE_ADDR=OFFICE,
        HTTP_X_FORWARDED_FOR=f"10.9.9.9, {HOME}",
    )
    assert response.status_code == 302 and logged_in(client)
