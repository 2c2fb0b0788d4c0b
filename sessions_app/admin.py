"""Admin: sessions with their placement and age, a terminate action, their executions, a live terminal.

The terminal page (``<id>/terminal/``, staff with the ``open_terminal``
permission) runs ``bash -i`` on a pseudo-terminal in the session's container,
through GET /execute/ws like any client: the page gets a session token minted
for the staff user (never an API key), xterm.js draws the terminal.
"""

from __future__ import annotations

import threading
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html

from sessions_app import placement
from sessions_app.models import Session, WorkerHost
from sessions_app.services import session_stop
from tenants.tokens import TERMINAL_PERMISSION, session_scope, stream_token_mint

# What the terminal runs: an interactive shell (every sandbox image has bash).
TERMINAL_COMMAND = "bash -i"


@admin.register(Session)
class SessionAdmin(admin.ModelAdmin):
    list_display = (
        "session_id", "tenant", "runtime", "stateful", "worker_host", "state", "age", "last_used_at", "busy",
    )
    list_filter = ("state", "runtime", "stateful", "tenant", "worker_host")
    list_select_related = ("tenant",)
    search_fields = ("session_id", "tenant__slug", "container_id")
    readonly_fields = (
        "tenant", "session_id", "runtime", "stateful", "state", "state_reason", "container_id", "worker_host",
        "limits", "busy_execution", "created_at", "last_used_at", "executions_link", "terminal_link",
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

    @admin.display(description="terminal")
    def terminal_link(self, obj: Session) -> str:
        if not obj.is_live:
            return "-"
        url = reverse("admin:sessions_app_session_terminal", args=[obj.pk])
        return format_html('<a href="{}">Open a live terminal (bash) in this session</a>', url)

    def get_urls(self) -> list[URLPattern]:
        terminal = self.admin_site.admin_view(self.terminal_view)
        return [
            path("<int:object_id>/terminal/", terminal, name="sessions_app_session_terminal"),
            *super().get_urls(),
        ]

    def terminal_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        """A live terminal into the session, over GET /execute/ws with a token minted for this staff user."""
        if not request.user.has_perm(TERMINAL_PERMISSION):
            raise PermissionDenied
        session = Session.objects.select_related("tenant").filter(pk=object_id).first()
        if session is None:
            raise Http404
        live = session.is_live and session.tenant.is_active
        context = {
            **self.admin_site.each_context(request),
            "title": f"Terminal: session {session.session_id}",
            "opts": self.model._meta,
            "original": session,
            "live": live,
        }
        if live:
            minted = stream_token_mint(
                tenant=session.tenant, api_key=None, scope=session_scope(session.session_id),
                staff_user_id=request.user.pk,
            )
            context.update(
                token=minted.token,
                command=TERMINAL_COMMAND,
                timeout_ms=session.tenant.max_timeout_ms,
            )
        return TemplateResponse(request, "admin/sessions_app/session/terminal.html", context)

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


@admin.register(WorkerHost)
class WorkerHostAdmin(admin.ModelAdmin):
    """Worker hosts with their heartbeat's view (alive, Docker, load) and the drain switch."""

    list_display = ("name", "draining", "alive", "docker", "load", "first_seen_at")
    list_filter = ("draining",)
    readonly_fields = ("name", "first_seen_at")
    fields = ("name", "draining", "first_seen_at")
    actions = ["drain", "undrain"]
    # This request's heartbeat view (the admin object is shared by every request's thread).
    _page = threading.local()

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        # One heartbeat read for the whole page.
        try:
            self._page.loads = {load.name: load for load in placement.host_loads()}
        except Exception:  # noqa: BLE001 - Redis away: the page still lists the hosts
            self._page.loads = {}
        return super().changelist_view(request, extra_context)

    def _load(self, obj: WorkerHost) -> placement.HostLoad | None:
        return getattr(self._page, "loads", {}).get(obj.name)

    @admin.display(description="alive", boolean=True)
    def alive(self, obj: WorkerHost) -> bool | None:
        load = self._load(obj)
        return None if load is None else load.alive

    @admin.display(description="docker", boolean=True)
    def docker(self, obj: WorkerHost) -> bool | None:
        load = self._load(obj)
        return None if load is None else load.docker

    @admin.display(description="sessions + pool / capacity")
    def load(self, obj: WorkerHost) -> str:
        load = self._load(obj)
        if load is None:
            return "-"
        return f"{load.sessions} + {load.sandboxes} / {load.capacity}"

    @admin.action(description="Drain: place no new sessions or one-shot runs there (its sessions finish)")
    def drain(self, request: HttpRequest, queryset: QuerySet[WorkerHost]) -> None:
        count = queryset.update(draining=True)
        self.message_user(request, f"Draining {count} host(s): they take no new work from their next heartbeat.")

    @admin.action(description="Undrain: take new sessions and runs again")
    def undrain(self, request: HttpRequest, queryset: QuerySet[WorkerHost]) -> None:
        count = queryset.update(draining=False)
        self.message_user(request, f"{count} host(s) take new work again.")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # a worker makes its row when it starts
