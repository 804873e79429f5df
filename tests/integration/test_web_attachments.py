"""Uploading and downloading attachments through Django: verified by their bytes, served safely."""

from __future__ import annotations

import datetime
import hashlib
import json
import uuid
from urllib.parse import quote

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from conversations import actions
from conversations.models import Attachment, Conversation
from emulators.anthropic import samples


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture
def conversation(alice) -> Conversation:
    return actions.create_conversation(alice)


def upload(client, conversation, name, content, content_type="application/octet-stream"):
    url = reverse("conversations:attachment_upload", args=[conversation.pk])
    file = SimpleUploadedFile(name, content, content_type=content_type)
    # As the composer does: the name in a header too, for a refusal made before reading the body.
    return client.post(url, {"file": file}, headers={"X-File-Name": quote(name)})


@pytest.mark.django_db
def test_an_image_is_stored_with_its_facts_and_served_as_its_verified_type(
    alice_client, conversation, media_root
):
    png = samples.png(64, 48, (220, 30, 30))
    # The declared type lies; the bytes decide.
    response = upload(alice_client, conversation, "shot.png", png, "application/octet-stream")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["kind"] == "image" and body["type"] == "image/png"
    assert (body["width"], body["height"], body["size"]) == (64, 48, len(png))
    row = Attachment.objects.get(pk=body["id"])
    assert row.owner.username == "alice" and row.conversation_id == conversation.pk
    assert row.sha256 == hashlib.sha256(png).hexdigest()
    assert not row.messages.exists()
    # Stored under our own name, not the uploader's.
    assert (media_root / row.file.name).read_bytes() == png
    assert "shot" not in row.file.name

    served = alice_client.get(body["url"])
    assert served.status_code == 200
    assert served["Content-Type"] == "image/png"
    assert served["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in served["Content-Security-Policy"]
    assert served["Content-Disposition"].startswith("inline")
    assert b"".join(served.streaming_content) == png


@pytest.mark.django_db
def test_a_pdf_keeps_its_page_count_and_downloads_rather_than_opens(alice_client, conversation):
    pdf = samples.pdf(["Quarterly report", "Page two", "Page three"])
    response = upload(alice_client, conversation, "report.pdf", pdf, "application/pdf")
    assert response.status_code == 201, response.content
    assert response.json()["pages"] == 3 and response.json()["kind"] == "pdf"
    served = alice_client.get(response.json()["url"])
    assert served["Content-Type"] == "application/pdf"
    assert served["Content-Disposition"].startswith("attachment")


@pytest.mark.django_db
def test_a_code_file_is_kept_as_text_and_served_as_plain_text_never_html(
    alice_client, conversation
):
    page = b"<html><body><script>alert(1)</script></body></html>"
    response = upload(alice_client, conversation, "page.html", page, "text/html")
    assert response.status_code == 201, response.content
    assert response.json()["kind"] == "text"
    served = alice_client.get(response.json()["url"])
    assert served["Content-Type"] == "text/plain; charset=utf-8"
    assert served["X-Content-Type-Options"] == "nosniff"


@pytest.mark.django_db
def test_a_code_file_that_mentions_a_pdf_header_is_still_text(alice_client, conversation):
    source = b'def pdf():\n    return b"%PDF-1.4\\n" + body\n'
    response = upload(alice_client, conversation, "make_pdf.py", source, "text/x-python")
    assert response.status_code == 201, response.content
    assert response.json()["kind"] == "text"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("name", "content", "content_type", "expected"),
    [
        (
            "cat.png",
            b"<!doctype html><html><script>alert(document.cookie)</script></html>",
            "image/png",
            "cat.png is not a JPEG, PNG, GIF or WebP image",
        ),
        (
            "logo.svg",
            b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
            "image/svg+xml",
            "logo.svg is an SVG",
        ),
        ("paper.pdf", b"just some text pretending", "application/pdf", "paper.pdf is not a PDF"),
        (
            "broken.pdf",
            b"%PDF-1.4\nnot really",
            "application/pdf",
            "broken.pdf is not a readable PDF",
        ),
        (
            "tool.exe",
            b"MZ\x90\x00\x03\x00\x00\x00",
            "application/x-msdownload",
            "not a file Claude",
        ),
        ("notes.txt", b"\xff\xfe\x00\x00binary", "text/plain", "not a file Claude"),
        ("empty.md", b"", "text/markdown", "empty.md is empty"),
    ],
)
def test_files_that_are_not_what_they_claim_are_refused_and_nothing_is_kept(
    alice_client, conversation, media_root, name, content, content_type, expected
):
    response = upload(alice_client, conversation, name, content, content_type)
    assert response.status_code == 400
    assert expected in response.json()["error"]
    assert not Attachment.objects.exists()
    assert not [path for path in media_root.rglob("*") if path.is_file()]


@pytest.mark.django_db
def test_the_api_limits_apply_with_clear_messages(alice_client, conversation, settings):
    wide = samples.png(8001, 10)
    response = upload(alice_client, conversation, "wide.png", wide, "image/png")
    assert response.status_code == 400
    assert (
        response.json()["error"] == "wide.png is 8001×10 pixels; images can be at most 8000×8000."
    )

    settings.ATTACHMENT_MAX_PDF_PAGES = 2
    response = upload(alice_client, conversation, "long.pdf", samples.pdf(["a", "b", "c"]))
    assert response.json()["error"] == "long.pdf has 3 pages; PDFs can have at most 2."

    settings.ATTACHMENT_MAX_IMAGE_BYTES = 1000
    big = samples.image(300, 300, fmt="JPEG")
    response = upload(alice_client, conversation, "big.jpg", big, "image/jpeg")
    assert "images can be at most 1000 bytes" in response.json()["error"]
    assert not Attachment.objects.exists()


@pytest.mark.django_db
def test_a_30_mb_file_is_refused_before_it_is_stored(alice_client, conversation):
    huge = b"%PDF-1.4\n" + b"0" * (30 * 1024 * 1024)
    response = upload(alice_client, conversation, "scan.pdf", huge, "application/pdf")
    assert response.status_code == 413
    assert response.json()["error"].startswith("scan.pdf is 30.0 MB; the files of one message")
    assert not Attachment.objects.exists()


@pytest.mark.django_db
def test_only_people_who_may_read_the_conversation_get_the_file(
    alice_client, client, bob, conversation, django_user_model
):
    url = upload(alice_client, conversation, "a.png", samples.png(4, 4)).json()["url"]
    client.force_login(bob)
    assert client.get(url).status_code == 404
    # Bob cannot upload into Alice's conversation either.
    assert upload(client, conversation, "b.png", samples.png(4, 4)).status_code == 404
    # Staff may read any conversation (to monitor it), so they may see its files.
    staff = django_user_model.objects.create_user("carol", "c@example.com", "pw-carol-1")
    staff.is_staff = True
    staff.save()
    client.force_login(staff)
    assert client.get(url).status_code == 200
    client.logout()
    assert client.get(url).status_code == 302  # to the login page, never the file


@pytest.mark.django_db(transaction=True)
def test_deleting_a_conversation_deletes_its_files_after_commit(
    alice_client, conversation, media_root
):
    upload(alice_client, conversation, "a.png", samples.png(4, 4))
    upload(alice_client, conversation, "b.pdf", samples.pdf(["x"]))
    stored = [media_root / row.file.name for row in Attachment.objects.all()]
    assert all(path.exists() for path in stored)
    response = alice_client.post(reverse("conversations:delete", args=[conversation.pk]))
    assert response.status_code == 302
    assert not Attachment.objects.exists()
    assert not any(path.exists() for path in stored)


@pytest.mark.django_db
def test_the_page_shows_a_prompts_files_and_carries_the_upload_config(alice_client, conversation):
    from conversations.models import Message

    prompt = Message.objects.create(
        conversation=conversation,
        role=Message.Role.USER,
        prompt_id="6f1c1b1e-7a0e-4a55-9a51-0d8c6a0f7a11",
        text="look",
    )
    upload(alice_client, conversation, "<img src=x onerror=alert(1)>.png", samples.png(10, 10))
    prompt.attachments.set(Attachment.objects.all())
    page = alice_client.get(conversation.get_absolute_url()).content.decode()
    assert 'class="turn-attachments"' in page
    assert "&lt;img src=x onerror=alert(1)&gt;.png" in page and "<img src=x" not in page
    config = page.split('id="chat-config" type="application/json">')[1].split("</script>")[0]
    attachments = json.loads(config)["attachments"]
    assert attachments["uploadUrl"].endswith("/attachments")
    assert attachments["maxFiles"] == 20


@pytest.mark.django_db
def test_the_admin_lists_files_per_conversation_and_per_user_with_sizes(
    alice_client, client, conversation, django_user_model, bob
):
    upload(alice_client, conversation, "red.png", samples.png(30, 20))
    upload(alice_client, conversation, "report.pdf", samples.pdf(["a", "b"]))
    other = actions.create_conversation(bob)
    client.force_login(bob)
    upload(client, other, "bobs.md", b"# hello from bob\n" * 100)
    admin_user = django_user_model.objects.create_superuser("root", "r@example.com", "pw-root-1")
    client.force_login(admin_user)

    page = client.get(reverse("admin:conversations_conversation_change", args=[conversation.pk]))
    text = page.content.decode()
    assert "red.png" in text and "report.pdf" in text and "bobs.md" not in text

    listing = reverse("admin:conversations_attachment_changelist")
    by_conversation = client.get(f"{listing}?conversation__id__exact={conversation.pk}")
    assert by_conversation.status_code == 200
    text = by_conversation.content.decode()
    assert "red.png" in text and "report.pdf" in text and "bobs.md" not in text
    by_user = client.get(f"{listing}?owner__id__exact={bob.pk}").content.decode()
    assert "bobs.md" in by_user and "red.png" not in by_user
    assert "2 KB" in by_user  # its size, readable


@pytest.mark.django_db(transaction=True)
def test_prune_attachments_deletes_old_unsent_uploads_and_their_files(
    alice_client, conversation, media_root
):
    from io import StringIO

    from django.core.management import call_command
    from django.utils import timezone

    from conversations.models import Message

    for name in ("old-unsent.png", "old-sent.png", "new-unsent.png"):
        upload(alice_client, conversation, name, samples.png(4, 4))
    prompt = Message.objects.create(
        conversation=conversation, role=Message.Role.USER, prompt_id=uuid.uuid4(), text="x"
    )
    prompt.attachments.add(Attachment.objects.get(name="old-sent.png"))
    day_ago = timezone.now() - datetime.timedelta(hours=25)
    Attachment.objects.exclude(name="new-unsent.png").update(created_at=day_ago)
    old_file = media_root / Attachment.objects.get(name="old-unsent.png").file.name

    out = StringIO()
    call_command("prune_attachments", stdout=out)
    assert out.getvalue().strip() == "deleted 1 unsent attachment"
    assert sorted(Attachment.objects.values_list("name", flat=True)) == [
        "new-unsent.png",
        "old-sent.png",
    ]
    assert not old_file.exists()
