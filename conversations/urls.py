from __future__ import annotations

from django.urls import path

from . import attachment_views, views

app_name = "conversations"

urlpatterns = [
    path("", views.conversation_list, name="list"),
    path("ably/token", views.ably_token, name="ably_token"),
    # The empty composer: a conversation only exists once its first prompt creates it.
    path("new", views.conversation_new, name="new"),
    # conversations/
    path("conversations/new", views.conversation_create, name="create"),
    path("conversations/<uuid:conversation_id>/", views.conversation_detail, name="detail"),
    # Issue 16: which version of the conversation every device shows.
    path("conversations/<uuid:conversation_id>/path", views.conversation_path, name="path"),
    path("conversations/<uuid:conversation_id>/rename", views.conversation_rename, name="rename"),
    path(
        "conversations/<uuid:conversation_id>/archive", views.conversation_archive, name="archive"
    ),
    path(
        "conversations/<uuid:conversation_id>/unarchive",
        views.conversation_unarchive,
        name="unarchive",
    ),
    path("conversations/<uuid:conversation_id>/delete", views.conversation_delete, name="delete"),
    # Attachments (issue 17).
    path(
        "conversations/<uuid:conversation_id>/attachments",
        attachment_views.attachment_upload,
        name="attachment_upload",
    ),
    path("attachments/<uuid:attachment_id>", attachment_views.attachment_file, name="attachment"),
]
