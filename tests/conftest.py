from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = [
    "emulators.ably.testing",
    "emulators.anthropic.testing",
    "tests.agent_fixtures",
]


# The stand-ins' own tests (their protocol cores, the SDKs against them, fuzzing) never touch
# the app's database, so CI's second run, on Postgres, leaves them out with `-m "not stand_in"`.
STAND_IN_TEST_PREFIXES = ("test_ably_", "test_anthropic_", "test_fuzz_")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).name.startswith(STAND_IN_TEST_PREFIXES):
            item.add_marker(pytest.mark.stand_in)


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", "alice@example.com", "alice-password-1")


@pytest.fixture
def bob(django_user_model):
    return django_user_model.objects.create_user("bob", "bob@example.com", "bob-password-1")


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


@pytest.fixture(autouse=True)
def _fast_password_hasher(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
