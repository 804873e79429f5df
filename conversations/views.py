from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import LoginView
from django.core.paginator import Paginator
from django.db.models import Exists, OuterRef, Prefetch, Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from . import ably_endpoint, actions, events, realtime, tree
from .forms import RenameForm, SearchForm, SignupForm
from .models import SENT_ATTACHMENTS, Conversation, Message

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    class AuthenticatedHttpRequest(HttpRequest):
        """A request `login_required` let through: its user is signed in."""

        user: User


CONVERSATIONS_PER_PAGE = 50
# The sidebar shows the newest of each kind; the list page (linked from it) has them all.
SIDEBAR_ACTIVE_LIMIT = 100
SIDEBAR_ARCHIVED_LIMIT = 30
# `GET /ably/token?scope=user`: only the user's list channel, for the conversation list page.
USER_SCOPE = "user"
# Stands in for a conversation's id in URLs rendered before the conversation exists.
PLACEHOLDER_ID = "00000000-0000-0000-0000-000000000000"


def _get_conversation_for_user(
    user: User, conversation_id: uuid.UUID | str, *, write: bool = True
) -> Conversation:
    """The one place that decides who may see a conversation.

    Its users may read and write it; staff may read anyone's (to monitor it). Everyone else,
    and any malformed id, gets a 404 so a conversation's existence never leaks. The result's
    `user_can_write` says which of the two the user got.
    """
    try:
        conversation_id = uuid.UUID(str(conversation_id))
    except ValueError:
        raise Http404("No such conversation") from None
    conversations = Conversation.objects.select_related("owner")
    # Its users first: one plain query on the common path (a correlated EXISTS annotation costs
    # more to build than the whole query); a second only for staff looking at someone else's.
    try:
        conversation = conversations.for_user(user).get(pk=conversation_id)
        conversation.user_can_write = True
        return conversation
    except Conversation.DoesNotExist:
        if write or not user.is_staff:
            raise Http404("No such conversation") from None
    try:
        conversation = conversations.get(pk=conversation_id)
    except Conversation.DoesNotExist:
        raise Http404("No such conversation") from None
    conversation.user_can_write = False
    return conversation


def _listed(conversations: QuerySet[Conversation]) -> QuerySet[Conversation]:
    """Leave out conversations nobody used: untitled and without a single message.

    New conversations are only created by their first prompt, but older versions made one per
    click on "New conversation"; those stay out of every list rather than clutter it.
    """
    has_messages = Exists(Message.objects.filter(conversation=OuterRef("pk")))
    return conversations.alias(has_messages=has_messages).exclude(title="", has_messages=False)


def _sidebar_context(
    request: AuthenticatedHttpRequest, current: Conversation | None
) -> dict[str, Any]:
    mine = _listed(Conversation.objects.for_user(request.user)).order_by(
        "-updated_at", "-created_at"
    )
    return {
        "sidebar_active": list(mine.filter(archived=False)[:SIDEBAR_ACTIVE_LIMIT]),
        "sidebar_archived": list(mine.filter(archived=True)[:SIDEBAR_ARCHIVED_LIMIT]),
        "current_conversation_id": str(current.pk) if current else "",
    }


def _token_config(**params: str) -> dict[str, Any]:
    """The token endpoint for ably-js: `tokenUrl` whole, and split for `auth.authorize()`."""
    path = reverse("conversations:ably_token")
    return {
        "tokenUrl": f"{path}?{urlencode(params)}" if params else path,
        "tokenPath": path,
        "tokenParams": params,
    }


def _client_config(request: HttpRequest, **page: Any) -> dict[str, Any]:
    """What the browser client needs, rendered into the page with json_script."""
    client_id = realtime.client_id_for_user(request.user)
    return {
        "clientId": client_id,
        "userChannel": events.user_channel(client_id),
        "agentClientId": settings.ABLY_AGENT_CLIENT_ID,
        "serverClientId": settings.ABLY_SERVER_CLIENT_ID,
        "ablyOptions": ably_endpoint.js_client_options(settings.ABLY_ENDPOINT),
        "contract": events.client_contract(),
        "streamingPattern": settings.STREAMING_PATTERN,
        "maxPromptChars": settings.MAX_PROMPT_CHARS,
        "placeholderId": PLACEHOLDER_ID,
        "urls": {
            "list": reverse("conversations:list"),
            "create": reverse("conversations:create"),
            "new": reverse("conversations:new"),
            "login": reverse("login"),
        },
        **page,
    }


def _attachment_config(conversation: Conversation | None, *, can_upload: bool) -> dict[str, Any]:
    from .attachment_views import client_config  # attachment_views imports this module

    return client_config(conversation, can_upload=can_upload)


def login_view(request: HttpRequest) -> HttpResponseBase:
    return LoginView.as_view(extra_context={"signup_enabled": settings.SIGNUP_ENABLED})(request)


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if not settings.SIGNUP_ENABLED:
        raise Http404("Sign-up is closed")
    if request.user.is_authenticated:
        return redirect("conversations:list")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("conversations:list")
    return render(request, "registration/signup.html", {"form": form})


@login_required
@require_GET
def conversation_list(request: AuthenticatedHttpRequest) -> HttpResponse:
    show_archived = request.GET.get("archived") == "1"
    search_form = SearchForm(request.GET or None)
    conversations = _listed(Conversation.objects.for_user(request.user)).filter(
        archived=show_archived
    )
    query = ""
    status = 200
    if search_form.is_bound:
        if search_form.is_valid():
            query = search_form.cleaned_data["q"]
        else:
            status = 400
    if query:
        matching = Message.objects.filter(text__icontains=query).values("conversation_id")
        conversations = conversations.filter(Q(title__icontains=query) | Q(pk__in=matching))
    page = Paginator(conversations.order_by("-updated_at", "-created_at"), CONVERSATIONS_PER_PAGE)
    page_obj = page.get_page(request.GET.get("page"))
    # The filters the pagination links must keep, ready to prefix `page=`.
    kept = {"archived": "1" if show_archived else "", "q": query}
    page_query = "".join(f"{urlencode({k: v})}&" for k, v in kept.items() if v)
    context = {
        "conversations": page_obj.object_list,
        "page_obj": page_obj,
        "page_query": page_query,
        "search_form": search_form,
        "query": query,
        "show_archived": show_archived,
        "client_config": _client_config(
            request,
            page="list",
            **_token_config(scope=USER_SCOPE),
            showArchived=show_archived,
            query=query,
            # List changes published after this instant are caught up from channel history.
            renderedAt=int(time.time() * 1000),
        ),
    }
    return render(request, "conversations/list.html", context, status=status)


@login_required
@require_GET
def conversation_new(request: AuthenticatedHttpRequest) -> HttpResponse:
    """An empty composer at a URL of its own: nothing is stored until the first prompt is sent."""
    context = {
        **_sidebar_context(request, None),
        "conversation": None,
        "turns": [],
        "read_only": False,
        "viewer_client_id": realtime.client_id_for_user(request.user),
        "rename_form": RenameForm(),
        "max_prompt_chars": settings.MAX_PROMPT_CHARS,
        "placeholder_id": PLACEHOLDER_ID,
        "client_config": _client_config(
            request,
            page="conversation",
            draft=True,
            **_token_config(scope=USER_SCOPE),
            conversationId=None,
            channel=None,
            title="",
            displayTitle="New conversation",
            archived=False,
            readOnly=False,
            # No upload URL yet: the first file creates the conversation (see conversation_create).
            attachments=_attachment_config(None, can_upload=True),
            storedResponseIds=[],
            storedPromptIds=[],
            conversationUrls=_conversation_urls(PLACEHOLDER_ID),
            renderedAt=int(time.time() * 1000),
        ),
    }
    return render(request, "conversations/detail.html", context)


@login_required
@require_POST
def conversation_create(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Create a conversation for its first prompt, which the browser then sends on its channel.

    Without a prompt nothing is created (a conversation with no prompt is an empty one left in
    the list): the user gets the empty composer instead. The one exception is a draft's first
    file (`for=attachments`, JSON only), which needs a conversation to upload into: that one is
    created unannounced, so no list shows it while it is empty (`_listed` leaves it out too).
    """
    wants_json = "application/json" in request.headers.get("Accept", "")
    prompt = request.POST.get("prompt", "")
    for_attachments = wants_json and request.POST.get("for") == "attachments"
    problem = ""
    if not prompt.strip() and not for_attachments:
        problem = "Type a message first."
    elif len(prompt) > settings.MAX_PROMPT_CHARS:
        problem = (
            f"Your message is {len(prompt):,} characters; "
            f"the limit is {settings.MAX_PROMPT_CHARS:,}."
        )
    if problem:
        if wants_json:
            return JsonResponse({"error": problem}, status=400)
        return redirect("conversations:new")
    conversation = actions.create_conversation(request.user, announce=not for_attachments)
    if not wants_json:
        return redirect(conversation)
    return JsonResponse(
        {
            "conversationId": str(conversation.pk),
            "channel": conversation.channel_name,
            "url": conversation.get_absolute_url(),
            "title": conversation.title,
            "displayTitle": conversation.display_title,
            **_token_config(conversation=str(conversation.pk)),
            "conversationUrls": _conversation_urls(conversation.pk),
            "attachments": _attachment_config(conversation, can_upload=True),
            # False: its devices' lists learn of it from its first prompt or answer instead.
            "announced": not for_attachments,
        },
        status=201,
    )


def _conversation_urls(conversation_id: Any) -> dict[str, str]:
    return {
        "detail": reverse("conversations:detail", args=[conversation_id]),
        "rename": reverse("conversations:rename", args=[conversation_id]),
        "archive": reverse("conversations:archive", args=[conversation_id]),
        "unarchive": reverse("conversations:unarchive", args=[conversation_id]),
        "delete": reverse("conversations:delete", args=[conversation_id]),
        "path": reverse("conversations:path", args=[conversation_id]),
    }


@login_required
@require_GET
def conversation_detail(
    request: AuthenticatedHttpRequest, conversation_id: uuid.UUID
) -> HttpResponse:
    conversation = _get_conversation_for_user(request.user, conversation_id, write=False)
    read_only = not conversation.user_can_write
    # Issue 16: every version, in tree order; the page shows the shared path and hides the rest.
    turns = tree.for_page(
        conversation.messages.prefetch_related(Prefetch("attachments", to_attr=SENT_ATTACHMENTS)),
        conversation.current_leaf_id,
    )
    context = {
        # Staff watching someone else's conversation get no sidebar: it would list their own.
        **(_sidebar_context(request, conversation) if not read_only else {}),
        "conversation": conversation,
        "turns": turns,
        "read_only": read_only,
        "viewer_client_id": realtime.client_id_for_user(request.user),
        "rename_form": RenameForm(initial={"title": conversation.title}),
        "max_prompt_chars": settings.MAX_PROMPT_CHARS,
        "placeholder_id": PLACEHOLDER_ID,
        "client_config": _client_config(
            request,
            page="conversation",
            draft=False,
            **_token_config(conversation=str(conversation.pk)),
            conversationId=str(conversation.pk),
            channel=conversation.channel_name,
            title=conversation.title,
            displayTitle=conversation.display_title,
            archived=conversation.archived,
            readOnly=read_only,
            attachments=_attachment_config(conversation, can_upload=not read_only),
            storedResponseIds=[str(t.response_id) for t in turns if t.response_id],
            storedPromptIds=sorted({str(t.prompt_id) for t in turns if t.role == "user"}),
            conversationUrls=_conversation_urls(conversation.pk),
            # Sidebar changes published after this instant are caught up from history.
            renderedAt=int(time.time() * 1000),
        ),
    }
    return render(request, "conversations/detail.html", context)


@login_required
@require_POST
def conversation_path(
    request: AuthenticatedHttpRequest, conversation_id: uuid.UUID
) -> HttpResponse:
    """Show another version (`< n/m >`): POST messageId = the version's responseId/promptId.
    Every device of the conversation follows through the channel's `path` event."""
    conversation = _get_conversation_for_user(request.user, conversation_id)
    event = actions.select_version(conversation, request.POST.get("messageId", ""))
    if event is None:
        return JsonResponse({"error": "No such message in this conversation."}, status=400)
    return JsonResponse({"ids": list(event.ids)})


@login_required
@require_http_methods(["GET", "POST"])
def conversation_rename(
    request: AuthenticatedHttpRequest, conversation_id: uuid.UUID
) -> HttpResponse:
    conversation = _get_conversation_for_user(request.user, conversation_id)
    form = RenameForm(request.POST or None, initial={"title": conversation.title})
    if request.method == "POST":
        if form.is_valid():
            actions.rename_conversation(conversation, form.cleaned_data["title"])
            return redirect(conversation)
        status = 400
    else:
        status = 200
    return render(
        request,
        "conversations/rename.html",
        {"conversation": conversation, "form": form},
        status=status,
    )


@login_required
@require_POST
def conversation_archive(
    request: AuthenticatedHttpRequest, conversation_id: uuid.UUID
) -> HttpResponse:
    conversation = _get_conversation_for_user(request.user, conversation_id)
    actions.set_archived(conversation, True)
    messages.success(request, f"Archived “{conversation.display_title}”.")
    return redirect("conversations:list")


@login_required
@require_POST
def conversation_unarchive(
    request: AuthenticatedHttpRequest, conversation_id: uuid.UUID
) -> HttpResponse:
    conversation = _get_conversation_for_user(request.user, conversation_id)
    actions.set_archived(conversation, False)
    return redirect(conversation)


@login_required
@require_http_methods(["GET", "POST"])
def conversation_delete(
    request: AuthenticatedHttpRequest, conversation_id: uuid.UUID
) -> HttpResponse:
    conversation = _get_conversation_for_user(request.user, conversation_id)
    if request.method == "POST":
        title = conversation.display_title
        actions.delete_conversation(conversation)
        messages.success(request, f"Deleted “{title}”.")
        return redirect("conversations:list")
    context = {"conversation": conversation, "message_count": conversation.messages.count()}
    return render(request, "conversations/confirm_delete.html", context)


@never_cache
@require_GET
def ably_token(request: HttpRequest) -> HttpResponse:
    """An Ably JWT for the browser (ably-js `authUrl`): a body of type application/jwt.

    `?conversation=<id>` scopes it to one conversation; `?scope=user` to the list channel only;
    neither grants every conversation of the user.
    """
    if not request.user.is_authenticated:
        # JSON, not a login redirect: ably-js is the caller, not a person.
        return JsonResponse({"error": "Log in to get an Ably token."}, status=401)
    scope = request.GET.get("scope", "")
    if scope not in ("", USER_SCOPE) or (scope and "conversation" in request.GET):
        return JsonResponse(
            {"error": f"Ask for ?conversation=<id>, ?scope={USER_SCOPE}, or neither."}, status=400
        )
    conversation = None
    user_can_write = None
    if "conversation" in request.GET:
        try:
            conversation = _get_conversation_for_user(
                request.user, request.GET["conversation"], write=False
            )
        except Http404:
            return JsonResponse({"error": "No such conversation."}, status=404)
        # Resolved for this user just now: the capability needs no second look.
        user_can_write = conversation.user_can_write
    token = realtime.create_token(
        request.user,
        conversation,
        user_channel_only=scope == USER_SCOPE,
        user_can_write=user_can_write,
    )
    return HttpResponse(token, content_type="application/jwt")
