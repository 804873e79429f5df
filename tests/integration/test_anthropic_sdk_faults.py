"""Validation errors, injected faults, SDK retries and cancellation, through the real SDK."""

from __future__ import annotations

import asyncio

import anthropic
import httpx
import httpx2
import pytest

MODEL = "claude-sonnet-5-5"
QUESTION = "How do I reverse a linked list in Python?"


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def make_client(server, **options) -> anthropic.Anthropic:
    options.setdefault("max_retries", 0)
    options.setdefault("api_key", "test-key")
    return anthropic.Anthropic(base_url=server.base_url, **options)


def make_async_client(server, **options) -> anthropic.AsyncAnthropic:
    options.setdefault("max_retries", 0)
    options.setdefault("api_key", "test-key")
    return anthropic.AsyncAnthropic(base_url=server.base_url, **options)


def transport_failure(error: BaseException) -> BaseException:
    """The HTTP-level error behind a failure while reading a stream's body.

    Up to anthropic 2.16 the SDK's `Stream` let the transport's own error (httpx2's
    RemoteProtocolError, ReadTimeout) escape mid-stream; from 2.17 it raises its documented
    `APIConnectionError` / `APITimeoutError` with that error as `__cause__`. Either way the
    stand-in's fault must reach the client as the same transport failure.
    """
    if isinstance(error, anthropic.APIConnectionError):
        assert error.__cause__ is not None, "the SDK error should carry the transport error"
        return error.__cause__
    return error


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "exception", "api_message"),
    [
        ([], anthropic.BadRequestError, "messages: at least one message is required"),
        (
            [{"role": "assistant", "content": "hello"}],
            anthropic.BadRequestError,
            'messages: first message must use the "user" role',
        ),
        (
            [{"role": "system", "content": "hello"}],
            anthropic.BadRequestError,
            "messages.0.role: Input should be 'user' or 'assistant'",
        ),
        (
            [{"role": "user", "content": ""}],
            anthropic.BadRequestError,
            "messages.0: all messages must have non-empty content except for the optional "
            "final assistant message",
        ),
    ],
)
def test_invalid_messages_raise_bad_request_without_retrying(
    anthropic_server, messages, exception, api_message
):
    client = make_client(anthropic_server, max_retries=2)
    with pytest.raises(exception) as caught:
        client.messages.create(model=MODEL, max_tokens=100, messages=messages)
    assert caught.value.status_code == 400
    assert caught.value.type == "invalid_request_error"
    assert caught.value.api_message == api_message
    assert caught.value.request_id == anthropic_server.messages_requests[0].request_id
    assert len(anthropic_server.messages_requests) == 1


async def test_unknown_model_raises_not_found(anthropic_server):
    client = make_async_client(anthropic_server)
    with pytest.raises(anthropic.NotFoundError) as caught:
        async with client.messages.stream(model="gpt-4", max_tokens=10, messages=user("hi")):
            pass
    assert caught.value.type == "not_found_error"
    assert caught.value.api_message == "model: gpt-4"


def test_missing_key_raises_authentication_error(anthropic_server):
    # The SDK refuses to send an empty key itself ("Illegal header value b'Bearer '"), so the
    # header is left out instead, as a misconfigured proxy or client would.
    client = make_client(
        anthropic_server, max_retries=2, default_headers={"Authorization": anthropic.Omit()}
    )
    with pytest.raises(anthropic.AuthenticationError) as caught:
        client.messages.create(model=MODEL, max_tokens=10, messages=user("hi"))
    assert caught.value.type == "authentication_error"
    assert caught.value.api_message == "x-api-key header is required"
    assert len(anthropic_server.messages_requests) == 1


def test_empty_x_api_key_header_is_refused(anthropic_server):
    response = httpx.post(
        f"{anthropic_server.base_url}/v1/messages",
        headers={"x-api-key": ""},
        json={"model": MODEL, "max_tokens": 10, "messages": user("hi")},
    )
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_required_key_rejects_any_other_key(anthropic_server):
    anthropic_server.require_key = "the-right-key"
    with pytest.raises(anthropic.AuthenticationError):
        make_client(anthropic_server, api_key="wrong").messages.create(
            model=MODEL, max_tokens=10, messages=user("hi")
        )
    good = make_client(anthropic_server, api_key="the-right-key").messages.create(
        model=MODEL, max_tokens=10, messages=user("hi")
    )
    assert good.stop_reason in ("end_turn", "max_tokens")


def test_missing_max_tokens_is_refused_by_sdk_and_server(anthropic_server):
    with pytest.raises(TypeError):
        make_client(anthropic_server).messages.create(model=MODEL, messages=user("hi"))  # type: ignore[call-arg]
    response = httpx.post(
        f"{anthropic_server.base_url}/v1/messages",
        headers={"x-api-key": "k"},
        json={"model": MODEL, "messages": user("hi")},
    )
    assert response.status_code == 400
    assert response.headers["x-should-retry"] == "false"
    assert response.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
        "request_id": response.headers["request-id"],
    }


def test_body_over_the_limit_raises_content_too_large(anthropic_server):
    anthropic_server.max_body_bytes = 2_000
    with pytest.raises(anthropic.ContentTooLargeError) as caught:
        make_client(anthropic_server).messages.create(
            model=MODEL, max_tokens=10, messages=user("x" * 5_000)
        )
    assert caught.value.status_code == 413
    assert caught.value.type == "request_too_large"


# --- HTTP status faults and SDK retries -------------------------------------------------------


def test_overloaded_marker_is_retried_then_raises_overloaded(anthropic_server):
    client = make_client(anthropic_server, max_retries=1)
    with pytest.raises(anthropic.OverloadedError) as caught:
        client.messages.create(model=MODEL, max_tokens=10, messages=user("hi [[fault:529]]"))
    assert caught.value.status_code == 529
    assert caught.value.type == "overloaded_error"
    attempts = anthropic_server.messages_requests
    assert [r.retry_count for r in attempts] == [0, 1]
    assert all(r.fault == "529" for r in attempts)


async def test_server_error_marker_raises_internal_server_error_after_retries(anthropic_server):
    client = make_async_client(anthropic_server, max_retries=2)
    with pytest.raises(anthropic.InternalServerError) as caught:
        async with client.messages.stream(
            model=MODEL, max_tokens=10, messages=user("hi [[fault:500]]")
        ):
            pass
    assert caught.value.status_code == 500
    assert caught.value.type == "api_error"
    assert [r.retry_count for r in anthropic_server.messages_requests] == [0, 1, 2]


def test_rate_limit_sends_retry_after_which_the_sdk_waits_for(anthropic_server):
    client = make_client(anthropic_server, max_retries=1)
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(model=MODEL, max_tokens=10, messages=user("hi [[fault:429=1.2]]"))
    assert caught.value.response.headers["retry-after"] == "1.2"
    assert caught.value.type == "rate_limit_error"
    first, second = anthropic_server.messages_requests
    # The SDK's own backoff for a first retry is at most 0.5 s; waiting longer shows it obeyed.
    assert second.received_at - first.received_at >= 1.1


def test_injected_fault_fails_only_the_next_requests_so_a_retry_succeeds(anthropic_server):
    anthropic_server.inject_fault("529", count=1)
    client = make_client(anthropic_server, max_retries=2)
    with client.messages.stream(model=MODEL, max_tokens=100, messages=user("hi")) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "end_turn"
    assert [(r.status, r.retry_count) for r in anthropic_server.messages_requests] == [
        (529, 0),
        (200, 1),
    ]


def test_control_endpoint_queues_faults_for_the_next_n_requests(anthropic_server):
    response = httpx.post(
        f"{anthropic_server.base_url}/_emulator/faults", json={"fault": "429=0.1", "count": 2}
    )
    assert response.json() == {"queued": ["429", "429"]}
    client = make_client(anthropic_server)
    for _ in range(2):
        with pytest.raises(anthropic.RateLimitError):
            client.messages.create(model=MODEL, max_tokens=10, messages=user("hi"))
    assert client.messages.create(model=MODEL, max_tokens=10, messages=user("hi")).content
    bad = httpx.post(f"{anthropic_server.base_url}/_emulator/faults", json={"fault": "teapot"})
    assert bad.status_code == 400 and "unknown fault" in bad.json()["error"]["message"]


# --- mid-stream faults ------------------------------------------------------------------------


async def test_midstream_error_raises_api_status_error_with_status_200(anthropic_server):
    client = make_async_client(anthropic_server, max_retries=2)
    received: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        async with client.messages.stream(
            model=MODEL, max_tokens=500, messages=user(f"{QUESTION} [[fault:midstream-error]]")
        ) as stream:
            async for text in stream.text_stream:
                received.append(text)
    assert not isinstance(caught.value, anthropic.OverloadedError)
    assert caught.value.status_code == 200
    assert caught.value.type == "overloaded_error"
    assert caught.value.api_message == "Overloaded"
    assert len(received) == 3
    assert stream.current_message_snapshot.content[0].text == "".join(received)
    assert len(anthropic_server.messages_requests) == 1  # never retried


def test_sync_midstream_error_via_create_stream(anthropic_server):
    stream = make_client(anthropic_server).messages.create(
        model=MODEL,
        max_tokens=500,
        messages=user("hi there, how are you today? [[fault:midstream-error=api_error]]"),
        stream=True,
    )
    with pytest.raises(anthropic.APIStatusError) as caught:
        list(stream)
    assert caught.value.type == "api_error"


async def test_dropped_connection_raises_remote_protocol_error(anthropic_server):
    client = make_async_client(anthropic_server, max_retries=2)
    received: list[str] = []
    with pytest.raises((httpx2.RemoteProtocolError, anthropic.APIConnectionError)) as caught:
        async with client.messages.stream(
            model=MODEL, max_tokens=500, messages=user(f"{QUESTION} [[fault:drop]]")
        ) as stream:
            async for text in stream.text_stream:
                received.append(text)
    assert isinstance(transport_failure(caught.value), httpx2.RemoteProtocolError)
    assert not isinstance(caught.value, anthropic.APITimeoutError)
    assert len(received) == 3
    (request,) = anthropic_server.messages_requests
    assert request.outcome == "dropped"


def test_clean_eof_without_message_stop_leaves_stop_reason_unset(anthropic_server):
    with make_client(anthropic_server).messages.stream(
        model=MODEL, max_tokens=500, messages=user(f"{QUESTION} [[fault:eof]]")
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason is None
    assert final.content[0].text


def test_stall_longer_than_the_read_timeout_raises_read_timeout(anthropic_server):
    client = make_client(anthropic_server, timeout=httpx2.Timeout(5, read=0.3))
    with pytest.raises((httpx2.ReadTimeout, anthropic.APITimeoutError)) as caught:
        with client.messages.stream(
            model=MODEL, max_tokens=500, messages=user(f"{QUESTION} [[fault:stall=3]]")
        ) as stream:
            for _ in stream.text_stream:
                pass
    assert isinstance(transport_failure(caught.value), httpx2.ReadTimeout)


def test_stall_shorter_than_the_read_timeout_completes(anthropic_server):
    with make_client(anthropic_server).messages.stream(
        model=MODEL, max_tokens=500, messages=user(f"{QUESTION} [[fault:stall=0.2]]")
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "end_turn"


async def test_slow_first_token_still_delivers_the_same_reply(anthropic_server):
    client = make_async_client(anthropic_server)
    async with client.messages.stream(
        model=MODEL,
        max_tokens=500,
        messages=user("Say exactly: patience [[fault:slow-first-token=0.3]]"),
    ) as stream:
        final = await stream.get_final_message()
    assert final.content[0].text == "patience"
    assert anthropic_server.messages_requests[0].fault == "slow-first-token"


def test_refusal_marker_stops_with_refusal(anthropic_server):
    message = make_client(anthropic_server).messages.create(
        model=MODEL, max_tokens=500, messages=user("hi [[fault:refusal]]")
    )
    assert message.stop_reason == "refusal"


# --- cancellation -----------------------------------------------------------------------------


async def test_leaving_the_stream_block_aborts_generation_server_side(anthropic_server_paced):
    client = make_async_client(anthropic_server_paced)
    async with client.messages.stream(
        model=MODEL, max_tokens=2000, messages=user(f"{QUESTION} Give me a long answer.")
    ) as stream:
        async for _ in stream.text_stream:
            break
    assert await anthropic_server_paced.wait_for_aborted_async(count=1)
    (request,) = anthropic_server_paced.aborted
    # It stopped writing long before the end of the reply (about 200 deltas at full length).
    assert request.events_sent < 100


async def test_cancelling_the_consuming_task_aborts_generation(anthropic_server_paced):
    client = make_async_client(anthropic_server_paced)
    first_text = asyncio.Event()

    async def consume() -> None:
        async with client.messages.stream(
            model=MODEL, max_tokens=2000, messages=user("Write 1000 words about travel in Japan")
        ) as stream:
            async for _ in stream.text_stream:
                first_text.set()

    task = asyncio.create_task(consume())
    await first_text.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await anthropic_server_paced.wait_for_aborted_async(count=1)


def test_sync_close_aborts_generation(anthropic_server_paced):
    stream = make_client(anthropic_server_paced).messages.create(
        model=MODEL,
        max_tokens=2000,
        messages=user("Write 1000 words about cooking pasta"),
        stream=True,
    )
    for event in stream:
        if event.type == "content_block_delta":
            break
    stream.close()
    assert anthropic_server_paced.wait_for_aborted(count=1)
    assert anthropic_server_paced.aborted[0].events_sent < 100


def test_hang_before_headers_raises_api_timeout_error_after_retries(anthropic_server):
    client = make_client(anthropic_server, max_retries=1, timeout=httpx2.Timeout(5, read=0.3))
    with pytest.raises(anthropic.APITimeoutError):
        client.messages.create(model=MODEL, max_tokens=10, messages=user("hi [[fault:hang=1]]"))
    assert [r.retry_count for r in anthropic_server.messages_requests] == [0, 1]
