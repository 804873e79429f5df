"""Which deletes revoke whose Ably tokens (the request itself: tests/integration/
test_web_token_revocation.py, against the stand-in)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from conversations import realtime
from conversations.models import Conversation

pytestmark = pytest.mark.django_db


def test_deleting_from_the_page_revokes_the_owners_tokens_once_committed(
    alice_client, alice, django_capture_on_commit_callbacks
):
    conversation = Conversation.objects.create(owner=alice)
    with django_capture_on_commit_callbacks(execute=False) as pending:
        response = alice_client.post(reverse("conversations:delete", args=[conversation.pk]))
        assert response.status_code == 302
        assert realtime.revocation_outbox == []
    for callback in pending:
        callback()
    assert realtime.revocation_outbox == [realtime.client_id_for_user(alice)]


def test_an_admin_bulk_delete_revokes_each_owner_once(
    client, django_user_model, alice, bob, django_capture_on_commit_callbacks
):
    staff = django_user_model.objects.create_superuser("root", "root@example.com", "root-pass-1")
    client.force_login(staff)
    owned = [Conversation.objects.create(owner=owner) for owner in (alice, alice, alice, bob)]
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("admin:conversations_conversation_changelist"),
            {
                "action": "delete_selected",
                "_selected_action": [str(c.pk) for c in owned],
                "post": "yes",
            },
        )
    assert response.status_code == 302
    assert not Conversation.objects.exists()
    assert sorted(realtime.revocation_outbox) == sorted(
        realtime.client_id_for_user(user) for user in (alice, bob)
    )


def test_deactivating_or_deleting_a_user_in_the_admin_revokes_their_tokens(
    client, django_user_model, alice, bob, django_capture_on_commit_callbacks
):
    staff = django_user_model.objects.create_superuser("root", "root@example.com", "root-pass-1")
    client.force_login(staff)
    alice_id, bob_id = (realtime.client_id_for_user(user) for user in (alice, bob))
    change = reverse("admin:auth_user_change", args=[bob.pk])
    form = {
        "username": "bob",
        "is_active": "",
        "date_joined_0": "2026-01-01",
        "date_joined_1": "00:00:00",
        "initial-date_joined_0": "2026-01-01",
        "initial-date_joined_1": "00:00:00",
    }
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(change, form)
    assert response.status_code == 302, response.content.decode()[:2000]
    assert realtime.revocation_outbox == [bob_id]
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("admin:auth_user_delete", args=[alice.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert not django_user_model.objects.filter(username="alice").exists()
    assert realtime.revocation_outbox == [bob_id, alice_id]
