"""Admin: the execution history, read-only, with filters and a detail page."""

from __future__ import annotations

import re
from typing import Any

from django.contrib import admin
from django.db import close_old_connections
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from executions import events
from executions.models import FINISHED, Execution, WebhookAttempt

# A display's PNG goes into an <img src="data:..."> only when it is plain base64.
BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")

# The landing page is the operator dashboard (runs by status, latency, top
# tenants, sandboxes per host) above the usual app list; the template draws it
# with {% operator_dashboard %} (executions/templatetags/isol8_dashboard.py).
admin.site.index_template = "admin/isol8_index.html"


class WebhookAttemptInline(admin.TabularInline):
    """Each try at delivering the execution's callback (read-only history)."""

    model = WebhookAttempt
    extra = 0
    can_delete = False
    fields = ("attempt", "at", "delivered", "status_code", "error", "duration_ms")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


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
        "id", "tenant", "session", "runtime", "status", "exit_code", "error", "program",
        "request", "limits", "streamed", "stdout", "stderr", "stdout_truncated", "stderr_truncated",
        "stdout_bytes", "stderr_bytes", "timed_out", "files", "created_at", "started_at",
        "finished_at", "duration_ms", "worker_host", "container_id", "batch_id", "callback_url",
        "network_log_table", "cell_result",
    )
    inlines = [WebhookAttemptInline]
    fieldsets = (
        (None, {"fields": ("id", "tenant", "session", "runtime", "status", "exit_code", "error")}),
        ("Request", {"fields": ("program", "request", "limits", "streamed", "batch_id", "callback_url")}),
        ("Output", {"fields": ("stdout", "stderr", "stdout_truncated", "stderr_truncated",
                               "stdout_bytes", "stderr_bytes", "timed_out", "files")}),
        ("Stateful cell", {"fields": ("cell_result",)}),
        ("Network (filtered)", {"fields": ("network_log_table",)}),
        ("Timing and placement", {"fields": ("created_at", "started_at", "finished_at", "duration_ms",
                                             "worker_host", "container_id")}),
    )

    def get_urls(self) -> list[URLPattern]:
        events_view = self.admin_site.admin_view(self.events_view)
        return [
            path("<uuid:object_id>/events/", events_view, name="executions_execution_events"),
            *super().get_urls(),
        ]

    def events_view(self, request: HttpRequest, object_id: str) -> StreamingHttpResponse:
        """The execution's event stream for the detail page's EventSource (staff session, view permission)."""
        if not self.has_view_permission(request):
            raise Http404
        execution = Execution.objects.filter(pk=object_id).only("id", "streamed").first()
        if execution is None:
            raise Http404
        after = events.parse_last_event_id(request.headers.get("Last-Event-ID"))
        close_old_connections()  # the stream reads the database from other threads: release this one's now
        response = StreamingHttpResponse(events.stream_for(execution, after=after), content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        return response

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        execution = Execution.objects.filter(pk=object_id).only("id", "status").first()
        context = dict(extra_context or {})
        if execution is not None and execution.status not in FINISHED:
            # Still queued or running: the page follows its output live.
            context["live_events_url"] = reverse("admin:executions_execution_events", args=[execution.pk])
        return super().change_view(request, object_id, form_url, extra_context=context)

    @admin.display(description="code / cmd")
    def program(self, obj: Execution) -> str:
        # In a <pre>: indentation is meaning in Python code.
        return format_html('<pre class="isol8-console">{}</pre>', obj.code or obj.cmd)

    @admin.display(description="egress log")
    def network_log_table(self, obj: Execution) -> SafeString | str:
        """The egress proxy's log of a filtered run: its totals, then one row per connection attempt."""
        log = obj.network_log
        if not isinstance(log, dict):
            return "-"
        totals = log.get("totals") or {}
        summary = format_html(
            "<p>{} connections: {} allowed, {} blocked; {} bytes up, {} bytes down{}</p>",
            totals.get("connections", 0), totals.get("allowed", 0), totals.get("blocked", 0),
            totals.get("bytesUp", 0), totals.get("bytesDown", 0),
            format_html(" ({} more not kept)", totals["dropped"]) if totals.get("dropped") else "",
        )
        entries = [e for e in log.get("entries") or [] if isinstance(e, dict)]
        if not entries:
            return summary
        # format_html escapes every value: hosts and paths are the sandboxed program's text.
        rows = format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}:{}{}</td><td>{}</td><td>{}</td>"
                                "<td>{} / {}</td><td>{}</td></tr>", (
            (e.get("timestamp", ""), e.get("method", ""), e.get("host", ""), e.get("port", ""),
             e.get("path") or "", e.get("action", ""), e.get("reason") or "-",
             e.get("bytesUp", 0), e.get("bytesDown", 0), e.get("durationMs", 0))
            for e in entries
        ))
        return format_html(
            '{}<table class="isol8-network-log"><thead><tr><th>time</th><th>method</th><th>host:port</th>'
            "<th>action</th><th>reason</th><th>bytes up / down</th><th>ms</th></tr></thead>"
            "<tbody>{}</tbody></table>",
            summary, rows,
        )

    @admin.display(description="cell result")
    def cell_result(self, obj: Execution) -> SafeString | str:
        """A stateful session's cell: its value's text, its exception, its displays (PNGs drawn), stateLost."""
        cell = obj.cell
        if not isinstance(cell, dict):
            return "-"
        value: dict[str, Any] = cell["value"] if isinstance(cell.get("value"), dict) else {}
        exception = cell.get("exception") if isinstance(cell.get("exception"), dict) else None
        outputs = [o.get("data") for o in cell.get("outputs") or [] if isinstance(o, dict)]
        images = format_html_join("", '<img class="isol8-display" alt="display {}" src="data:image/png;base64,{}">', (
            (n, data["image/png"]) for n, data in enumerate([*outputs, value], 1)
            if isinstance(data, dict) and isinstance(data.get("image/png"), str)
            and BASE64.fullmatch(data["image/png"])
        ))
        return format_html(
            '<p>value: <code>{}</code>; {} display(s); state lost: {}</p>{}<div>{}</div>',
            str(value.get("text/plain", "-"))[:2000], len(outputs), "yes" if cell.get("stateLost") else "no",
            format_html("<p>exception: <code>{}: {}</code></p>", exception.get("ename"), exception.get("evalue"))
            if exception else "",
            images,
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
