"""The page policy: django-csp's middleware, plus the Ably endpoints the browser may connect to.

The static part of the Content-Security-Policy is `CONTENT_SECURITY_POLICY` in settings. The
Ably hosts depend on `ABLY_ENDPOINT`, which is read per response (never at import time) so a
settings override applies at once.

`ProductErrorPagesMiddleware` renders the product's own 404 and 403 pages for a view that
refuses a request, also with DEBUG on: Django's debug 404 page lists every URL pattern, which a
user probing someone else's conversation must not see. A URL nothing matches still gets the
debug page in development (that is raised while resolving, before any view runs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from csp.middleware import CSPMiddleware, PolicyParts
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.template.loader import render_to_string
from django.utils.log import log_response

from conversations import ably_endpoint


class ContentSecurityPolicyMiddleware(CSPMiddleware):
    def get_policy_parts(
        self, request: HttpRequest, response: HttpResponseBase, report_only: bool = False
    ) -> PolicyParts:
        parts = super().get_policy_parts(request, response, report_only)
        if report_only:
            return parts
        base = (getattr(settings, "CONTENT_SECURITY_POLICY", None) or {}).get("DIRECTIVES", {})
        update = dict(parts.update or {})
        ably = ably_endpoint.csp_connect_sources(settings.ABLY_ENDPOINT)
        if "connect-src" in base or "connect-src" in update:
            update["connect-src"] = [*update.get("connect-src", []), *ably]
        return replace(parts, update=update)


class ProductErrorPagesMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, Http404):
            template, status = "404.html", 404
        elif isinstance(exception, PermissionDenied):
            template, status = "403.html", 403
        else:
            return None
        response = HttpResponse(render_to_string(template, request=request), status=status)
        # Logged as Django logs the error pages it renders itself.
        log_response(
            "%s: %s", response.reason_phrase, request.path, response=response, request=request
        )
        return response
