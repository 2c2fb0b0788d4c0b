"""Server-side SVG charts for the admin: stacked columns, stacked rows, and quota meters.

Plain functions of plain data that return an SVG document as a string, with no
Django and no JavaScript: the page is a real picture as soon as the HTML
arrives, nothing is fetched from a CDN, and the output can be unit-tested as
text. Every piece of text a caller passes in (labels, series names, titles) is
escaped here, so the result may be marked safe by the caller.

Each drawn bar is a ``<rect class="bar">`` carrying ``data-series`` and
``data-value`` and a ``<title>`` tooltip, which is what the browser tests look
for. Text is drawn in ``currentColor``, so the charts follow the admin's light
and dark themes; the bar colours come from the caller.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

FONT = 'font-family="-apple-system, Segoe UI, system-ui, Roboto, sans-serif"'
GRID = "#8886"  # a translucent grey that reads on light and dark backgrounds
TRACK = "#8883"


@dataclass(frozen=True)
class Series:
    """One stacked layer: its legend name, its colour, and one value per category."""

    name: str
    color: str
    values: Sequence[float]


def compact(value: float) -> str:
    """A short axis or bar label: 950, 1.2k, 34k, 1.5M (integers stay exact below a thousand)."""
    if value < 0:
        return "-" + compact(-value)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= limit:
            scaled = value / limit
            text = f"{scaled:.1f}" if scaled < 10 else f"{scaled:.0f}"
            return text.removesuffix(".0") + suffix
    if value == int(value):
        return str(int(value))
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}".rstrip("0").rstrip(".")


def nice_ticks(max_value: float, count: int = 5) -> list[float]:
    """Axis ticks from 0 to a round number at or above ``max_value``, about ``count`` steps.

    Steps are 1, 2, 2.5 or 5 times a power of ten, so tick labels stay short
    and readable; an empty chart (``max_value`` 0) still gets an axis 0..1.
    """
    if max_value <= 0:
        return [0.0, 1.0]
    raw = max_value / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    steps = math.ceil(max_value / step - 1e-9)
    return [round(i * step, 10) for i in range(steps + 1)]


def _attrs(**attrs: object) -> str:
    return " ".join(f'{name.rstrip("_").replace("_", "-")}="{escape(str(value))}"' for name, value in attrs.items())


def _text(x: float, y: float, content: str, **attrs: object) -> str:
    return f'<text {_attrs(x=f"{x:.1f}", y=f"{y:.1f}", **attrs)}>{escape(content)}</text>'


def _bar(x: float, y: float, width: float, height: float, *, color: str, series: str, value: float, tip: str) -> str:
    attrs = _attrs(class_="bar", x=f"{x:.2f}", y=f"{y:.2f}", width=f"{width:.2f}", height=f"{height:.2f}",
                   fill=color, data_series=series, data_value=f"{value:g}")
    return f"<rect {attrs}><title>{escape(tip)}</title></rect>"


def _svg(width: int, height: int, title: str, body: list[str], css_class: str, *, fluid: bool = True) -> str:
    """The document: ``fluid`` ones fill their container's width (text scales with them), others keep their size."""
    size = 'width="100%"' if fluid else f'width="{width}" height="{height}"'
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" {_attrs(class_=css_class, viewBox=f"0 0 {width} {height}")} '
        f'{size} preserveAspectRatio="xMinYMin meet" role="img" {FONT} font-size="11" fill="currentColor">'
        f"<title>{escape(title)}</title>{''.join(body)}</svg>"
    )


def _legend(series: Sequence[Series], *, x: float, y: float, width: float) -> list[str]:
    """Colour swatches and names in a row, right-aligned in ``width`` from ``x``."""
    items = [(s, 22 + 6.5 * len(s.name)) for s in series]
    left = x + max(0.0, width - sum(w for _, w in items))
    out = []
    for s, w in items:
        out.append(f'<g class="legend-item" data-series="{escape(s.name)}">'
                   f'<rect {_attrs(x=f"{left:.1f}", y=f"{y - 9:.1f}", width=10, height=10, rx=2, fill=s.color)}/>'
                   f'{_text(left + 14, y, s.name)}</g>')
        left += w
    return out


def stacked_columns(
    *,
    labels: Sequence[str],
    series: Sequence[Series],
    title: str,
    x_label: str,
    y_label: str,
    width: int = 1100,
    height: int = 300,
    label_every: int = 1,
    tip_labels: Sequence[str] | None = None,
) -> str:
    """Vertical bars, one per label, each a stack of the series' values (bottom first).

    ``label_every`` thins the category labels under the axis (every third hour,
    say); ``tip_labels`` are the longer names the tooltips use (a full date).
    """
    left, right, top, bottom = 56, 12, 30, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(s.values[i] for s in series) for i in range(len(labels))]
    ticks = nice_ticks(max(totals, default=0))
    scale = plot_h / ticks[-1]
    body = [_text(left, 14, title, font_weight="bold", font_size=12)]
    body += _legend(series, x=left + 160, y=14, width=plot_w - 160)
    for tick in ticks:
        y = top + plot_h - tick * scale
        body.append(f'<line {_attrs(x1=left, x2=left + plot_w, y1=f"{y:.1f}", y2=f"{y:.1f}", stroke=GRID)}/>')
        body.append(_text(left - 6, y + 4, compact(tick), text_anchor="end"))
    band = plot_w / max(1, len(labels))
    bar_w = max(1.0, band * 0.78)
    tips = tip_labels or labels
    for i, label in enumerate(labels):
        x = left + i * band + (band - bar_w) / 2
        base = float(top + plot_h)
        for s in series:
            value = s.values[i]
            if value <= 0:
                continue
            h = value * scale
            base -= h
            body.append(_bar(x, base, bar_w, h, color=s.color, series=s.name, value=value,
                             tip=f"{tips[i]} · {s.name}: {value:g} of {totals[i]:g}"))
        if i % max(1, label_every) == 0:
            body.append(_text(x + bar_w / 2, top + plot_h + 15, label, text_anchor="middle"))
    body.append(f'<line {_attrs(x1=left, x2=left + plot_w, y1=top + plot_h, y2=top + plot_h, stroke="currentColor")}/>')
    if not any(totals):
        body.append(_text(left + plot_w / 2, top + plot_h / 2, "nothing in this window", text_anchor="middle",
                          opacity="0.6"))
    body.append(_text(left + plot_w / 2, height - 6, x_label, text_anchor="middle", opacity="0.8"))
    mid = top + plot_h / 2
    body.append(_text(14, mid, y_label, text_anchor="middle", transform=f"rotate(-90 14 {mid:.1f})", opacity="0.8"))
    return _svg(width, height, title, body, "isol8-chart stacked-columns")


def stacked_rows(
    *,
    labels: Sequence[str],
    series: Sequence[Series],
    title: str,
    x_label: str,
    width: int = 540,
    row_height: int = 22,
    label_width: int = 150,
    value_format: Callable[[float], str] = compact,
    links: Sequence[str | None] | None = None,
) -> str:
    """Horizontal bars, one row per label, stacked from the left; the row's total is written after it.

    ``links``: a URL per row (or None), making its label a link.
    """
    top, bottom, right = 30, 30 if x_label else 10, 56
    plot_w = width - label_width - right
    height = top + bottom + row_height * max(1, len(labels))
    totals = [sum(s.values[i] for s in series) for i in range(len(labels))]
    ticks = nice_ticks(max(totals, default=0), count=4)
    scale = plot_w / ticks[-1]
    body = [_text(0, 14, title, font_weight="bold", font_size=12)]
    if len(series) > 1:
        body += _legend(series, x=label_width, y=14, width=plot_w + right)
    for tick in ticks:
        x = label_width + tick * scale
        body.append(f'<line {_attrs(x1=f"{x:.1f}", x2=f"{x:.1f}", y1=top - 4, y2=height - bottom, stroke=GRID)}/>')
    for i, label in enumerate(labels):
        y = top + i * row_height
        shown = _text(label_width - 8, y + row_height * 0.65, label if len(label) <= 22 else label[:21] + "…",
                      text_anchor="end")
        link = links[i] if links else None
        body.append(f'<a {_attrs(href=link, class_="row-link")}>{shown}</a>' if link else shown)
        x = float(label_width)
        for s in series:
            value = s.values[i]
            if value <= 0:
                continue
            w = value * scale
            body.append(_bar(x, y + 3, w, row_height - 6, color=s.color, series=s.name, value=value,
                             tip=f"{label} · {s.name}: {value_format(value)}"))
            x += w
        body.append(_text(x + 5, y + row_height * 0.65, value_format(totals[i])))
    if not labels:
        body.append(_text(label_width + plot_w / 2, top + row_height * 0.65, "nothing in this window",
                          text_anchor="middle", opacity="0.6"))
    if x_label:
        body.append(_text(label_width + plot_w / 2, height - 8, x_label, text_anchor="middle", opacity="0.8"))
    return _svg(width, height, title, body, "isol8-chart stacked-rows")


def meter(*, label: str, used: float, cap: float | None, unit: str = "", width: int = 420) -> str:
    """A quota bar: ``used`` against ``cap``, green, then amber from 75 %, red from 90 %.

    A cap of None is no limit: the bar shows what is used and says "unlimited".
    """
    height, bar_y, bar_h = 40, 20, 14
    used_text = compact(used) + unit
    body = [_text(0, 12, label, font_weight="bold")]
    body.append(f'<rect {_attrs(class_="track", x=0, y=bar_y, width=width, height=bar_h, rx=3, fill=TRACK)}/>')
    if cap is None:
        body.append(_text(width, 12, f"{used_text} used · unlimited", text_anchor="end"))
        return _svg(width, height, f"{label}: {used_text}, unlimited", body, "isol8-meter unlimited", fluid=False)
    share = used / cap if cap > 0 else 1.0
    color = "#ba2121" if share >= 0.9 else "#d68a00" if share >= 0.75 else "#3b8f5a"
    fill_w = width * min(1.0, share)
    if used > 0:
        body.append(_bar(0, bar_y, max(fill_w, 2.0), bar_h, color=color, series=label, value=used,
                         tip=f"{label}: {used_text} of {compact(cap)}{unit}"))
    body.append(_text(width, 12, f"{used_text} of {compact(cap)}{unit} ({share:.0%})", text_anchor="end"))
    return _svg(width, height, f"{label}: {used_text} of {compact(cap)}{unit}", body, "isol8-meter", fluid=False)
