"""The admin's SVG charts (isol8_site/charts.py): well-formed, proportional, escaped, labelled."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from isol8_site import charts

NS = {"svg": "http://www.w3.org/2000/svg"}


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)  # well-formed XML, or this raises
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return root


def bars(root: ET.Element) -> list[ET.Element]:
    return [r for r in root.iter("{http://www.w3.org/2000/svg}rect") if r.get("class") == "bar"]


def texts(root: ET.Element) -> list[str]:
    return [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text")]


@pytest.mark.parametrize(("top", "ticks"), [
    (0, [0, 1]),
    (7, [0, 2, 4, 6, 8]),
    (10, [0, 2, 4, 6, 8, 10]),
    (1234, [0, 250, 500, 750, 1000, 1250]),
    (0.3, [0, 0.1, 0.2, 0.3]),
])
def test_ticks_run_from_zero_to_a_round_number_at_or_above_the_top(top, ticks):
    assert charts.nice_ticks(top) == ticks


@pytest.mark.parametrize(("value", "label"), [
    (0, "0"), (950, "950"), (1000, "1k"), (1234, "1.2k"), (34_000, "34k"), (1_500_000, "1.5M"),
    (2.5, "2.5"), (0.25, "0.25"), (12.34, "12.3"),
])
def test_compact_labels_are_short(value, label):
    assert charts.compact(value) == label


def test_stacked_columns_draw_a_segment_per_nonzero_value_stacked_in_series_order():
    svg = charts.stacked_columns(
        labels=["a", "b", "c"],
        series=[charts.Series("ok", "#0a0", [10, 0, 5]), charts.Series("error", "#a00", [10, 3, 0])],
        title="Runs", x_label="hour", y_label="runs",
    )
    root = parse(svg)
    drawn = bars(root)
    assert [(b.get("data-series"), b.get("data-value")) for b in drawn] == [
        ("ok", "10"), ("error", "10"), ("error", "3"), ("ok", "5"),
    ]
    ok_a, error_a, error_b, ok_c = (float(b.get("height")) for b in drawn)
    assert ok_a == pytest.approx(error_a) == pytest.approx(2 * ok_c)
    assert error_b == pytest.approx(ok_a * 0.3)
    # The first series is at the bottom: the second one sits on top of it.
    first, second = drawn[0], drawn[1]
    assert float(second.get("y")) + float(second.get("height")) == pytest.approx(float(first.get("y")))
    # Tooltips name the category, the series, its value and the bar's total.
    assert drawn[1].find("svg:title", NS).text == "a · error: 10 of 20"


def test_stacked_columns_have_a_legend_axis_labels_and_ticks():
    root = parse(charts.stacked_columns(
        labels=[f"{h:02}:00" for h in range(24)],
        series=[charts.Series("ok", "#0a0", [h for h in range(24)]), charts.Series("timeout", "#fa0", [1] * 24)],
        title="Runs per hour", x_label="hour (UTC)", y_label="runs", label_every=6,
    ))
    labels = texts(root)
    assert {"Runs per hour", "hour (UTC)", "runs", "ok", "timeout"} <= set(labels)
    assert [t for t in labels if t.endswith(":00")] == ["00:00", "06:00", "12:00", "18:00"]
    assert "25" in labels and "0" in labels  # the y axis: 0..25 in steps of 5
    legend = [g.get("data-series") for g in root.iter("{http://www.w3.org/2000/svg}g")]
    assert legend == ["ok", "timeout"]


def test_an_empty_chart_draws_its_axes_and_says_so():
    root = parse(charts.stacked_columns(
        labels=["a", "b"], series=[], title="Runs", x_label="day", y_label="runs",
    ))
    assert bars(root) == []
    assert "nothing in this window" in texts(root)


def test_every_text_given_is_escaped():
    nasty = '<script>alert("x")</script>&'
    svg = charts.stacked_rows(
        labels=[nasty], series=[charts.Series(nasty, "#000", [3])], title=nasty, x_label=nasty,
        links=['/admin/?q="><script>'],
    )
    assert "<script>" not in svg
    root = parse(svg)
    assert nasty in texts(root)
    assert root.find(".//svg:a", NS).get("href") == '/admin/?q="><script>'


def test_stacked_rows_are_proportional_and_link_their_labels():
    svg = charts.stacked_rows(
        labels=["acme", "globex"], series=[charts.Series("runs", "#00a", [40, 10])], title="Top", x_label="runs",
        links=["/admin/tenants/tenant/1/change/", None],
    )
    root = parse(svg)
    wide, narrow = (float(b.get("width")) for b in bars(root))
    assert wide == pytest.approx(4 * narrow)
    links = root.findall(".//svg:a", NS)
    assert [a.get("href") for a in links] == ["/admin/tenants/tenant/1/change/"]
    assert links[0].find("svg:text", NS).text == "acme"
    assert {"40", "10"} <= set(texts(root))  # each row's total after its bar


def test_a_meter_fills_its_share_and_turns_red_near_the_cap():
    root = parse(charts.meter(label="Concurrency", used=3, cap=4, width=400))
    (fill,) = bars(root)
    assert float(fill.get("width")) == pytest.approx(300)
    assert fill.get("fill") == "#d68a00"  # 75 %: amber
    assert "3 of 4 (75%)" in texts(root)
    (full,) = bars(parse(charts.meter(label="Rate", used=12, cap=10, width=400)))
    assert float(full.get("width")) == pytest.approx(400) and full.get("fill") == "#ba2121"  # over the cap: clamped
    assert bars(parse(charts.meter(label="Rate", used=0, cap=10))) == []


def test_a_meter_without_a_cap_says_unlimited():
    root = parse(charts.meter(label="Execution seconds this month", used=1234.5, cap=None, unit=" s"))
    assert bars(root) == []
    assert "1.2k s used · unlimited" in texts(root)
    assert "unlimited" in root.get("class")
