from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest_plugins = [
    "emulators.ably.testing",
    "emulators.anthropic.testing",
    "tests.agent_fixtures",
]


# The stand-in's helpers point the SDKs at it the way the product does (emulators/ never imports
# the app, so the suite tells it how).
def _python_client_options(endpoint: str, client_id: str | None) -> dict[str, Any]:
    from conversations.agent.ably_adapter import client_options  # needs Django set up

    return client_options(endpoint, client_id=client_id)


def _js_client_options(endpoint: str) -> dict[str, Any]:
    from conversations.ably_endpoint import js_client_options

    return js_client_options(endpoint)


def pytest_configure(config: pytest.Config) -> None:
    from emulators.ably import testing as ably_testing  # imported here: after pytest_plugins

    ably_testing.use_client_options(python=_python_client_options, js=_js_client_options)


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
