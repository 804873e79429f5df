"""Login throttling with django-axes: the hooks settings.py names (AXES_*_CALLABLE, the backend).

Failed log-ins are counted per account and per client IP (`AXES_LOCKOUT_PARAMETERS`); at
LOGIN_FAILURE_LIMIT either one is locked for LOGIN_LOCKOUT_MINUTES, the right password included.
Staff unlock an account or IP early by deleting its row under "Axes > Access attempts" in the
admin (or `manage.py axes_reset_username NAME` / `axes_reset_ip IP`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from axes.backends import AxesStandaloneBackend
from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from .text import storable

# AccessAttempt.username's max_length.
STORED_USERNAME_MAX_LENGTH = 255


class LoginThrottleBackend(AxesStandaloneBackend):
    """Axes' lockout check, for log-ins over HTTP only.

    `authenticate()` without a request (management commands, scripts) cannot be brute-forced
    from outside and has no client IP to count: it goes straight to the next backend instead of
    failing as axes' own backend does.
    """

    def authenticate(self, request: HttpRequest | None, *args: Any, **kwargs: Any) -> None:
        if request is None:
            return None
        # Axes' backend authenticates no one: it returns nothing or, when locked out, raises.
        super().authenticate(request, *args, **kwargs)
        return None


def attempted_username(request: HttpRequest, credentials: dict[str, Any] | None) -> str:
    """The username an attempt is counted under, as axes stores it: storable on any database."""
    username = (credentials or {}).get("username")
    if username is None:
        username = request.POST.get("username", "")
    return storable(str(username))[:STORED_USERNAME_MAX_LENGTH]


def client_ip(request: HttpRequest) -> str:
    """The client's address: REMOTE_ADDR, or behind LOGIN_TRUSTED_PROXY_COUNT reverse proxies
    the address the outermost of them saw (X-Forwarded-For, counted from the right, so a
    client cannot pick its own address by sending the header itself)."""
    proxies = settings.LOGIN_TRUSTED_PROXY_COUNT
    remote: str = request.META.get("REMOTE_ADDR", "")
    if proxies <= 0:
        return remote
    forwarded_for: str = request.META.get("HTTP_X_FORWARDED_FOR", "")
    forwarded = [part.strip() for part in forwarded_for.split(",")]
    forwarded = [part for part in forwarded if part]
    return forwarded[-proxies] if len(forwarded) >= proxies else remote


def failure_limit(request: HttpRequest, credentials: Any) -> int:
    """AXES_FAILURE_LIMIT, read at call time so a deployment or a test can change it."""
    return settings.LOGIN_FAILURE_LIMIT


def cool_off(request: HttpRequest | None = None) -> timedelta:
    return timedelta(minutes=settings.LOGIN_LOCKOUT_MINUTES)


def lockout_message() -> str:
    minutes = settings.LOGIN_LOCKOUT_MINUTES
    return (
        f"Too many failed log-in attempts for this account or from this network. Try again in "
        f"{minutes} minute{'s' if minutes != 1 else ''}, or ask an administrator to unlock it."
    )


def locked_out(
    request: HttpRequest, original_response: HttpResponse | None, credentials: Any = None
) -> HttpResponse:
    """The log-in page again, with the lockout said plainly (429, not axes' bare text)."""
    form = AuthenticationForm(request, initial={"username": attempted_username(request, None)})
    context = {
        "form": form,
        "lockout_message": lockout_message(),
        "next": request.POST.get("next", request.GET.get("next", "")),
        "signup_enabled": settings.SIGNUP_ENABLED,
    }
    return render(request, "registration/login.html", context, status=429)
