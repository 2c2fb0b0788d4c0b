"""Admin: sessions with their placement and age, a terminate action, their executions."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html

from sessions_app.models import Session
from sessions_app.services import session_stop


@admin.register(Session)
class SessionAdmin(admin.ModelAdmin):
    list_display = (
        "session_id", "tenant", "runtime", "worker_host", "state", "age", "last_used_at", "busy",
    )
    list_filter = ("state", "runtime", "tenant", "worker_host")
    list_select_related = ("tenant",)
    search_fields = ("session_id", "tenant__slug", "container_id")
    readonly_fields = (
        "tenant", "session_id", "runtime", "state", "state_reason", "container_id", "worker_host",
        "limits", "busy_execution", "created_at", "last_used_at", "executions_link",
    )
    fields = readonly_fields
    actions = ["terminate"]

    @admin.display(description="age")
    def age(self, obj: Session) -> str:
        seconds = int((timezone.now() - obj.created_at).total_seconds())
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"

    @admin.display(description="running", boolean=True)
    def busy(self, obj: Session) -> bool:
        return obj.busy_execution is not None

    @admin.display(description="executions")
    def executions_link(self, obj: Session) -> str:
        return format_html(
            '<a href="/admin/executions/execution/?session__id__exact={}">{} execution(s)</a>',
            obj.pk,
            obj.executions.count(),
        )

    @admin.action(description="Terminate selected sessions (stops their containers)")
    def terminate(self, request: HttpRequest, queryset: QuerySet[Session]) -> None:
        count = 0
        for session in queryset.exclude(state="stopped"):
            session_stop(session=session, reason="terminated in the admin")
            count += 1
        self.message_user(request, f"Terminated {count} session(s); their containers are being removed.")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
