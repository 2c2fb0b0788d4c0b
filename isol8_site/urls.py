"""Routes: isol8's HTTP protocol (api.md), the history extensions, and the admin."""

from django.contrib import admin
from django.urls import path

from executions import apis as executions
from isol8_site.health import HealthApi
from isol8_site.openapi import DocsApi, SchemaApi
from sessions_app import apis as sessions
from tenants import apis as auth

handler400 = "isol8_site.errors.json_400"
handler404 = "isol8_site.errors.json_404"
handler500 = "isol8_site.errors.json_500"

urlpatterns = [
    path("health", HealthApi.as_view()),
    path("metrics", executions.MetricsApi.as_view()),
    path("execute", executions.ExecuteApi.as_view()),
    path("execute/stream", executions.ExecuteStreamApi.as_view()),
    path("execute/batch", executions.ExecuteBatchApi.as_view()),
    path("executions", executions.ExecutionListApi.as_view()),
    path("executions/<str:execution_id>", executions.ExecutionDetailApi.as_view()),
    path("executions/<str:execution_id>/events", executions.ExecutionEventsApi.as_view()),
    path("executions/<str:execution_id>/cancel", executions.ExecutionCancelApi.as_view()),
    path("executions/<str:execution_id>/token", executions.ExecutionTokenApi.as_view()),
    path("sessions", sessions.SessionListApi.as_view()),
    path("session/<str:session_id>", sessions.SessionDeleteApi.as_view()),
    path("session/<str:session_id>/token", sessions.SessionTokenApi.as_view()),
    path("session/<str:session_id>/restart", sessions.SessionRestartApi.as_view()),
    path("file", sessions.FileApi.as_view()),
    path("cleanup", executions.CleanupApi.as_view()),
    path("auth/keys", auth.KeysApi.as_view()),
    path("auth/keys/<str:key_id>", auth.KeyRevokeApi.as_view()),
    path("auth/login", auth.LoginApi.as_view()),
    path("openapi.json", SchemaApi.as_view(), name="openapi"),
    path("docs", DocsApi.as_view(), name="docs"),
    path("admin/", admin.site.urls),
]
