from __future__ import annotations

from django import forms
from django.contrib.auth.forms import UserCreationForm, UsernameField
from django.contrib.auth.models import User

from .models import Conversation

SEARCH_MAX_LENGTH = 200


class SearchForm(forms.Form):
    q = forms.CharField(
        label="Search",
        required=False,
        max_length=SEARCH_MAX_LENGTH,
        strip=True,
        widget=forms.TextInput(attrs={"type": "search", "placeholder": "Search conversations"}),
        error_messages={
            "max_length": f"Search for at most {SEARCH_MAX_LENGTH} characters "
            "(this search has %(show_value)d).",
        },
    )


class RenameForm(forms.Form):
    title = forms.CharField(
        label="Title",
        max_length=Conversation.TITLE_MAX_LENGTH,
        strip=True,
        error_messages={
            "required": "Give the conversation a title.",
            "max_length": f"A title can be at most {Conversation.TITLE_MAX_LENGTH} characters "
            "(this one has %(show_value)d).",
        },
    )


class SignupForm(UserCreationForm[User]):
    # Spelled out rather than inheriting UserCreationForm.Meta, which the Django 5.2 stubs do
    # not declare; the same three settings Django's own Meta has.
    class Meta:
        model = User
        fields = ("username",)
        field_classes = {"username": UsernameField}
