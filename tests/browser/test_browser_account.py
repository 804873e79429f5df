"""Accounts in the browser: logging in through the form (with login throttling on), the lockout
page, and a delete revoking the tokens a device holds while its other pages keep working."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect

from conversations import actions, realtime
from tests.browser.conftest import WAIT_MS, stored_reply

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ALICE_PASSWORD = "alice-password-1"


def submit_login(page, username: str, password: str) -> None:
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def test_logging_in_through_the_form_and_the_lockout_page(stack, browser, alice, settings):
    settings.LOGIN_FAILURE_LIMIT = 3
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(stack.absolute("/accounts/login/"))
        submit_login(page, "alice", "wrong-password")
        expect(page.get_by_role("alert")).to_contain_text("correct username and password")
        submit_login(page, "alice", ALICE_PASSWORD)
        expect(page).to_have_url(re.compile(r"/$"))
        expect(page.locator("[data-connection-state]").first).to_have_attribute(
            "data-connection-state", "connected"
        )

        intruder = browser.new_context().new_page()
        intruder.goto(stack.absolute("/accounts/login/"))
        for _ in range(3):
            submit_login(intruder, "alice", "guess")
        alert = intruder.get_by_role("alert")
        expect(alert).to_contain_text("Too many failed log-in attempts")
        expect(alert).to_contain_text("administrator")
        # Still the product's page, with the form, and the right password no longer works.
        submit_login(intruder, "alice", ALICE_PASSWORD)
        expect(intruder.get_by_role("alert")).to_contain_text("Too many failed log-in attempts")
        expect(intruder).to_have_url(re.compile(r"/accounts/login/"))
        intruder.context.close()
    finally:
        context.close()


def alices_live_tokens_issued_after(stack, client_id: str, instant_ms: int) -> bool:
    """Whether every live stand-in connection of `client_id` uses a token from after `instant_ms`."""

    def check() -> bool:
        mine = [
            connection
            for connection in stack.ably.core.connections.values()
            if connection.client_id == client_id and connection.transport_id is not None
        ]
        return bool(mine) and all(
            (connection.credentials.issued_ms or 0) > instant_ms for connection in mine
        )

    return bool(stack.ably.call(check))


def test_a_delete_renews_a_devices_token_and_its_other_pages_keep_working(
    stack, make_device, alice
):
    doomed = actions.create_conversation(alice, title="Doomed")
    kept = actions.create_conversation(alice, title="Kept")
    laptop = make_device(alice)
    laptop.open("/")
    expect(laptop.page.get_by_text("Doomed")).to_be_visible()
    phone = make_device(alice)
    phone.open_conversation(kept)

    deleted_at_ms = int(time.time() * 1000)
    actions.delete_conversation(doomed)

    # Both pages renewed their token through /ably/token (ably-js, on the 40141) and are live.
    client_id = realtime.client_id_for_user(alice)
    deadline = time.monotonic() + WAIT_MS / 1000
    while not alices_live_tokens_issued_after(stack, client_id, deleted_at_ms):
        assert time.monotonic() < deadline, "a device still runs on a token from before the delete"
        time.sleep(0.1)
    expect(laptop.page.get_by_text("Doomed")).to_have_count(0)
    phone.wait_until_live()
    phone.send("Say exactly: Still here after the delete.")
    reply = phone.replies().last
    expect(reply).to_have_attribute("data-status", "complete")
    assert stored_reply("Say exactly: Still here after the delete.").text == (
        "Still here after the delete."
    )
