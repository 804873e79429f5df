"""Settings that depend on the environment, each read in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from django.conf import settings

REDIS_URL = "redis://127.0.0.1:6379/1"
# Prints what the settings became, and with Redis checks the cache really works.
PROBE = """
import json, os
os.environ["DJANGO_SETTINGS_MODULE"] = "chatsite.settings"
import django
django.setup()
from django.conf import settings
from django.core.cache import cache
if "Redis" in settings.CACHES["default"]["BACKEND"]:
    cache.set("settings-probe", {"ok": True}, 5)
    assert cache.get("settings-probe") == {"ok": True}
    assert cache._cache.get_client() is cache._cache.get_client()
database = settings.DATABASES["default"]
print(json.dumps({
    "cache": settings.CACHES["default"]["BACKEND"],
    "sessions": settings.SESSION_ENGINE,
    "conn_max_age": database["CONN_MAX_AGE"],
    "health_checks": database["CONN_HEALTH_CHECKS"],
}))
"""
VARIABLES = ("CACHE_URL", "SESSION_ENGINE", "CONN_MAX_AGE", "CONN_HEALTH_CHECKS")


def read_settings(**environment: str) -> dict:
    env = {key: value for key, value in os.environ.items() if key not in VARIABLES}
    env.update(environment)
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_database_connections_persist_with_a_health_check_by_default():
    assert read_settings() == {
        "cache": "django.core.cache.backends.locmem.LocMemCache",
        "sessions": "django.contrib.sessions.backends.db",
        "conn_max_age": 60,
        "health_checks": True,
    }
    overridden = read_settings(CONN_MAX_AGE="0", CONN_HEALTH_CHECKS="false")
    assert (overridden["conn_max_age"], overridden["health_checks"]) == (0, False)


def test_sessions_stay_in_the_database_without_a_shared_cache():
    # A per-process cache would keep a logged-out session alive in the other workers.
    assert read_settings(CACHE_URL="locmemcache://")["sessions"] == (
        "django.contrib.sessions.backends.db"
    )


def test_a_redis_cache_url_caches_sessions_in_redis():
    configured = read_settings(CACHE_URL=REDIS_URL)
    assert configured["cache"] == "chatsite.cache.RedisCache"
    assert configured["sessions"] == "django.contrib.sessions.backends.cached_db"


def test_the_session_engine_can_be_chosen_explicitly():
    configured = read_settings(
        CACHE_URL=REDIS_URL, SESSION_ENGINE="django.contrib.sessions.backends.db"
    )
    assert configured["sessions"] == "django.contrib.sessions.backends.db"
