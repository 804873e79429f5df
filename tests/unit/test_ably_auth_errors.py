"""Ably error codes carry the HTTP status and envelope the SDKs key their behaviour on."""

from __future__ import annotations

import pytest

from emulators.ably.errors import AblyError, ably_error, capability_denied


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (40000, 400),
        (40003, 400),
        (40012, 400),
        (40101, 401),
        (40102, 401),
        (40104, 401),
        (40105, 401),
        (40142, 401),  # token errors are 401s: that is what makes SDKs renew
        (40144, 401),
        (40160, 401),  # ably-js asserts 401 for capability denials
        (40171, 403),
        (40400, 404),  # unknown key or app
        (42911, 429),
        (50000, 500),
        (80008, 400),
        (90001, 400),
        (91005, 400),
    ],
)
def test_codes_carry_ablys_http_status(code: int, status: int) -> None:
    error = ably_error(code)
    assert (error.code, error.status_code) == (code, status)
    assert error.message  # never an empty message


def test_envelope_and_headers() -> None:
    error = ably_error(40142, "Token expired")
    assert error.to_envelope() == {
        "error": {
            "code": 40142,
            "statusCode": 401,
            "message": "Token expired",
            "href": "https://help.ably.io/error/40142",
        }
    }
    assert error.http_headers() == {
        "X-Ably-ErrorCode": "40142",
        "X-Ably-ErrorMessage": "Token expired",
    }


def test_header_message_is_single_line_latin1() -> None:
    headers = AblyError(40000, "bad\r\nthing – “quoted”", 400).http_headers()
    message = headers["X-Ably-ErrorMessage"]
    assert "\n" not in message and "\r" not in message
    message.encode("latin-1")  # would raise if a header could not be sent


def test_unknown_codes_fall_back_to_their_hundreds() -> None:
    error = ably_error(40999, "something odd")
    assert error.status_code == 409
    assert ably_error(40160).message == "Operation not permitted with provided capability"


def test_capability_denied_names_the_operation_and_channel() -> None:
    error = capability_denied("publish", "ai:1")
    assert (error.code, error.status_code) == (40160, 401)
    assert "publish" in error.message and "ai:1" in error.message
