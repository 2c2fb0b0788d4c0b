"""Admin for tenants and API keys: create keys (shown once), revoke them, see use."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from isol8_site import charts
from tenants.models import ApiKey, Tenant
from tenants.quotas import Usage, egress_usage, tenant_usage
from tenants.services import apikey_create, apikey_revoke, tenant_rotate_webhook_secret


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    extra = 0
    can_delete = False
    fields = ("display_prefix", "name", "created_at", "expires_at", "last_used_at", "revoked_at")
    readonly_fields = fields
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = (
        "slug", "name", "is_active", "max_concurrent", "max_per_minute", "max_sessions",
        "usage", "created_at",
    )
    list_filter = ("is_active",)
    search_fields = ("slug", "name")
    readonly_fields = ("created_at", "usage", "quota_meters", "webhook_secret_set", "egress_totals")
    inlines = [ApiKeyInline]
    actions = ["rotate_webhook_secret"]
    fieldsets = (
        (None, {"fields": ("slug", "name", "is_active", "created_at", "usage")}),
        ("Quota usage now", {"fields": ("quota_meters",)}),
        (
            "Quotas and caps",
            {
                "fields": (
                    "max_concurrent", "max_per_minute", "max_sessions", "max_session_memory",
                    "max_session_cpus", "monthly_seconds",
                    "max_timeout_ms", "max_memory", "max_cpu", "max_pids", "max_output_size",
                    "allowed_runtimes", "allowed_networks", "allow_installs",
                )
            },
        ),
        (
            'Network "filtered" (allow it in allowed_networks)',
            {
                "fields": (
                    "egress_hosts", "max_egress_connections", "max_egress_bytes", "egress_bytes_per_second",
                    "max_egress_open", "egress_totals",
                )
            },
        ),
        ("Webhooks (callbackUrl)", {"fields": ("callback_hosts", "webhook_secret_set")}),
    )

    @admin.display(description="Webhook secret")
    def webhook_secret_set(self, obj: Tenant) -> str:
        # Never shown again after the action that set it.
        return f"set ({obj.webhook_secret[:10]}...)" if obj.webhook_secret else "not set: use the action"

    @admin.action(description="Set a new webhook secret (shown once)")
    def rotate_webhook_secret(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        for tenant in queryset:
            secret = tenant_rotate_webhook_secret(tenant=tenant)
            self.message_user(
                request, f"New webhook secret of {tenant.slug} (copy it now, it is not shown again): {secret}",
                messages.WARNING,
            )

    @admin.display(description="Usage now")
    def usage(self, obj: Tenant) -> str:
        usage = _usage(obj)
        if isinstance(usage, str):
            return usage
        return (
            f"{usage.running}/{_cap(obj.max_concurrent)} running, "
            f"{usage.last_minute}/{_cap(obj.max_per_minute)} this minute, "
            # The reverse relation's manager is sessions_app's, with its one definition of live.
            f"{obj.sessions.live().count()}/{_cap(obj.max_sessions)} sessions, "
            f"{usage.month_seconds:.0f}s this month"
            + (f" of {obj.monthly_seconds}s" if obj.monthly_seconds is not None else "")
        )


    @admin.display(description="Quotas")
    def quota_meters(self, obj: Tenant) -> SafeString | str:
        """One bar per quota, from the counters the quota checks themselves read (tenants/quotas.py)."""
        usage = _usage(obj)
        if isinstance(usage, str):
            return usage
        meters = [
            charts.meter(label="Concurrency: executions running now", used=usage.running, cap=obj.max_concurrent),
            charts.meter(label="Rate: executions started in the last minute", used=usage.last_minute,
                         cap=obj.max_per_minute),
            charts.meter(label="Execution seconds this month", used=round(usage.month_seconds, 1),
                         cap=obj.monthly_seconds, unit=" s"),
            # The reverse relation's manager is sessions_app's, with its one definition of live.
            charts.meter(label="Live sessions", used=obj.sessions.live().count(), cap=obj.max_sessions),
        ]
        # isol8_site.charts escapes every text it is given.
        return format_html(
            '<div class="isol8-meters" style="display:grid;gap:8px;max-width:460px;width:100%">{}</div>',
            format_html_join("", "{}", ((mark_safe(svg),) for svg in meters)),
        )


    @admin.display(description="Egress this month")
    def egress_totals(self, obj: Tenant) -> str:
        """What the tenant's finished filtered runs did through the egress proxy this calendar month."""
        if obj.pk is None:
            return "-"
        try:
            totals = egress_usage(tenant=obj)
        except Exception as exc:  # noqa: BLE001 - the page must render when Redis is down
            return f"unavailable ({exc.__class__.__name__})"
        return (
            f"{totals['connections']} connections ({totals['allowed']} allowed, {totals['blocked']} blocked), "
            f"{_bytes(totals['bytesUp'])} up, {_bytes(totals['bytesDown'])} down"
        )


def _bytes(value: int) -> str:
    """A byte count for a person: 512 B, 1.5 KiB, 256.0 MiB."""
    size, unit = float(value), "B"
    for unit in ("B", "KiB", "MiB", "GiB"):  # the unit the loop stops at is the answer
        if size < 1024 or unit == "GiB":
            break
        size /= 1024
    return f"{value} B" if unit == "B" else f"{size:.1f} {unit}"


def _usage(obj: Tenant) -> Usage | str:
    """The tenant's usage now, or what to show instead (a new tenant, Redis down: the page must render)."""
    if obj.pk is None:
        return "-"
    try:
        return tenant_usage(tenant=obj)
    except Exception as exc:  # noqa: BLE001 - the page must render when Redis is down
        return f"unavailable ({exc.__class__.__name__})"


def _cap(value: int | None) -> str:
    return "∞" if value is None else str(value)


class ApiKeyAddForm(forms.ModelForm):
    class Meta:
        model = ApiKey
        fields = ("tenant", "name", "expires_at")


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = (
        "display_prefix", "name", "tenant", "created_at", "expires_at", "last_used_at", "revoked_at",
    )
    list_filter = ("tenant", ("revoked_at", admin.EmptyFieldListFilter))
    list_select_related = ("tenant",)
    search_fields = ("name", "prefix", "tenant__slug")
    readonly_fields = ("display_prefix", "tenant", "created_at", "last_used_at", "revoked_at")
    fields = ("display_prefix", "tenant", "name", "expires_at", "created_at", "last_used_at", "revoked_at")
    actions = ["revoke_keys"]

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = ApiKeyAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return ApiKeyAddForm.Meta.fields if obj is None else self.fields

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return () if obj is None else self.readonly_fields

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        created = apikey_create(tenant=obj.tenant, name=obj.name)
        if obj.expires_at:
            ApiKey.objects.filter(pk=created.api_key.pk).update(expires_at=obj.expires_at)
        # The admin redirects to the new object; make `obj` that object.
        obj.pk = created.api_key.pk
        obj._state.adding = False
        messages.warning(
            request,
            f"New API key for {obj.tenant.slug}: {created.plaintext} — copy it now, "
            "it is not stored and will not be shown again.",
        )

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Keys are revoked, not deleted, so history can still name them.
        return False

    @admin.action(description="Revoke selected keys (irreversible)")
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        revoked = sum(apikey_revoke(api_key=key) for key in queryset)
        self.message_user(request, f"Revoked {revoked} key(s); {queryset.count() - revoked} already were.")
