"""Ably error codes and the error envelope, as the SDKs parse them.

Codes, statuses and base messages follow Ably's public error registry (ably-common
`protocol/errors.json`) and the statuses the SDK test suites assert (e.g. 40160 -> 401,
40400 -> 404 for an unknown key). Use `ably_error(code, detail)` so a code always carries the
HTTP status the SDKs expect.
"""

from __future__ import annotations

from typing import Any

# code -> (HTTP status, Ably's message for it)
ERROR_TABLE: dict[int, tuple[int, str]] = {
    40000: (400, "Bad request"),
    40001: (400, "Invalid request body"),
    40002: (400, "Invalid parameter name"),
    40003: (400, "Invalid parameter value"),
    40004: (400, "Invalid header"),
    40005: (400, "Invalid credential"),
    40006: (400, "Invalid connection id"),
    40007: (400, "Invalid message id"),
    40008: (400, "Invalid content length"),
    40009: (400, "Maximum message length exceeded"),
    40010: (400, "Invalid channel name"),
    40012: (400, "Invalid clientId"),
    40013: (400, "Invalid message data or encoding"),
    40016: (400, "Invalid message name"),
    40017: (400, "Unsupported protocol version"),
    40020: (400, "Batch error"),
    40030: (400, "Invalid publish request"),
    40100: (401, "Unauthorized"),
    40101: (401, "Invalid credentials"),
    40102: (401, "Incompatible credentials"),
    40103: (401, "Invalid use of Basic auth over non-TLS transport"),
    40104: (401, "Timestamp not current"),
    40105: (401, "Nonce value replayed"),
    40106: (401, "Unable to obtain credentials from given parameters"),
    40131: (401, "Key revoked"),
    40140: (401, "Token error"),
    40141: (401, "Token revoked"),
    40142: (401, "Token expired"),
    40143: (401, "Token unrecognised"),
    40144: (401, "Invalid JWT format"),
    40145: (401, "Invalid token format"),
    40160: (401, "Operation not permitted with provided capability"),
    40161: (401, "Operation not permitted as it requires an identified client"),
    40166: (401, "Operation not permitted: an unidentified client cannot act on its own messages"),
    40170: (401, "Error from client token callback"),
    40171: (403, "No means provided to renew auth token"),
    40300: (403, "Forbidden"),
    40400: (404, "Not found"),
    40500: (405, "Method not allowed"),
    42910: (429, "Rate limit exceeded (nonfatal): request rejected"),
    42911: (
        429,
        "Max per-connection publish rate limit exceeded (nonfatal): unable to publish message",
    ),
    42912: (429, "There is a channel iteration call already in progress"),
    42920: (429, "Rate limit exceeded (fatal)"),
    42921: (429, "Max per-connection publish rate limit exceeded (fatal); closing connection"),
    50000: (500, "Internal error"),
    50001: (500, "Internal channel error"),
    50002: (500, "Internal connection error"),
    50003: (500, "Timeout error"),
    80000: (400, "Connection failed"),
    80002: (400, "Connection suspended"),
    80003: (400, "Disconnected"),
    80008: (400, "Unable to recover connection (connection expired)"),
    80013: (400, "Protocol error"),
    80017: (400, "Connection closed"),
    80018: (400, "Invalid connection id (invalid format)"),
    90001: (400, "Channel operation failed (invalid channel state)"),
    90003: (404, "Unable to recover channel (messages expired)"),
    90010: (400, "Maximum number of channels per connection exceeded"),
    91000: (400, "Unable to enter presence channel (no clientId)"),
    91001: (400, "Unable to enter presence channel (invalid channel state)"),
    91002: (400, "Unable to leave presence channel that is not entered"),
    91003: (400, "Unable to enter presence channel (maximum member limit exceeded)"),
    91004: (400, "Unable to automatically re-enter presence channel"),
    91005: (400, "Presence state is out of sync"),
    93002: (400, "Mutable messages are not enabled for this channel namespace"),
}


class AblyError(Exception):
    def __init__(self, code: int, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status_code = status_code or code // 100

    def __repr__(self) -> str:
        return f"AblyError(code={self.code}, status_code={self.status_code}, {self.message!r})"

    def to_dict(self) -> dict[str, Any]:
        """ErrorInfo as it appears in protocol messages and REST bodies."""
        return {
            "code": self.code,
            "statusCode": self.status_code,
            "message": self.message,
            "href": f"https://help.ably.io/error/{self.code}",
        }

    def to_envelope(self) -> dict[str, Any]:
        """The REST error body: `{"error": ErrorInfo}`."""
        return {"error": self.to_dict()}

    def http_headers(self) -> dict[str, str]:
        """Headers the browser SDK needs before it will read the error body at all."""
        # Header values must be latin-1 and single-line; the body keeps the full message.
        safe_message = self.message.replace("\r", " ").replace("\n", " ")
        safe_message = safe_message.encode("latin-1", "replace").decode("latin-1")
        return {"X-Ably-ErrorCode": str(self.code), "X-Ably-ErrorMessage": safe_message}


def ably_error(
    code: int, detail: str | None = None, *, status_code: int | None = None
) -> AblyError:
    """An AblyError with Ably's status for `code`; `detail` replaces the generic message."""
    default_status, base_message = ERROR_TABLE.get(code, (code // 100, "Error"))
    return AblyError(code, detail or base_message, status_code or default_status)


def bad_request(detail: str) -> AblyError:
    return ably_error(40000, detail)


def invalid_parameter(detail: str) -> AblyError:
    return ably_error(40003, detail)


def capability_denied(operation: str, channel: str | None = None) -> AblyError:
    where = f" on channel {channel!r}" if channel is not None else ""
    return ably_error(
        40160,
        f"Operation {operation!r} not permitted{where} with the provided capability",
    )
