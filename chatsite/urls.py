from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from conversations import views as conversation_views

urlpatterns = [
    path("admin/", admin.site.urls),
    # accounts/: Django's auth views with the project's templates, plus optional sign-up.
    path("accounts/login/", conversation_views.login_view, name="login"),
    path("accounts/signup/", conversation_views.signup, name="signup"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("conversations.urls")),
]
