"""Admin: the execution history, read-only, with filters and a detail page."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html

from executions.models import Execution


@admin.register(Execution)
class ExecutionAdmin(admin.ModelAdmin):
    list_display = (
        "id", "tenant", "runtime", "status", "exit_code", "duration_ms", "session_link",
        "created_at", "worker_host",
    )
    list_filter = ("status", "runtime", "tenant", "streamed", ("created_at", admin.DateFieldListFilter))
    list_select_related = ("tenant", "session")
    search_fields = ("id", "code", "cmd", "tenant__slug", "session__session_id", "container_id")
    date_hierarchy = "created_at"
    ordering = ("-created_at",)
    readonly_fields = (
        "id", "tenant", "session", "runtime", "status", "exit_code", "error", "code", "cmd",
        "request", "limits", "streamed", "stdout", "stderr", "stdout_truncated", "stderr_truncated",
        "stdout_bytes", "stderr_bytes", "timed_out", "files", "created_at", "started_at",
        "finished_at", "duration_ms", "worker_host", "container_id",
    )
    fieldsets = (
        (None, {"fields": ("id", "tenant", "session", "runtime", "status", "exit_code", "error")}),
        ("Request", {"fields": ("code", "cmd", "request", "limits", "streamed")}),
        ("Output", {"fields": ("stdout", "stderr", "stdout_truncated", "stderr_truncated",
                               "stdout_bytes", "stderr_bytes", "timed_out", "files")}),
        ("Timing and placement", {"fields": ("created_at", "started_at", "finished_at", "duration_ms",
                                             "worker_host", "container_id")}),
    )

    @admin.display(description="session")
    def session_link(self, obj: Execution) -> str:
        if obj.session_id is None:
            return "-"
        return format_html(
            '<a href="/admin/sessions_app/session/{}/change/">{}</a>', obj.session_id, obj.session
        )

    # History rows are evidence: nobody adds, edits or deletes them here.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
