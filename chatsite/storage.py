from __future__ import annotations

from collections.abc import Callable
from re import Match
from typing import Any

from whitenoise.storage import CompressedManifestStaticFilesStorage

# Our own ES modules; vendored npm builds are served as they are.
OWN_MODULES_PREFIX = "js/"


class StaticFilesStorage(CompressedManifestStaticFilesStorage):
    """Hashed, compressed static files whose ES module imports point at hashed names too.

    Without import rewriting, `conversation.js` (hashed) would import `./realtime.js` (unhashed),
    so a deploy could mix old and new modules for as long as browsers cache them.
    """

    support_js_module_import_aggregation = True

    def url_converter(
        self,
        name: str,
        hashed_files: dict[str, Any],
        template: str | None = None,
        # Django 6.0 adds `ignored_blocks` (django-stubs already describes it): passed on as is.
        *args: Any,
        **kwargs: Any,
    ) -> Callable[[Match[str]], str]:
        if name.endswith(".js") and not name.startswith(OWN_MODULES_PREFIX):
            # npm builds mention `import('…')` in comments and type annotations; leave them be.
            return lambda match: match["matched"]
        return super().url_converter(name, hashed_files, template, *args, **kwargs)
