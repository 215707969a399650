"""The overview's SVG chart of outcomes per minute (notifier.web.console.chart)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from notifier.web.console.chart import COLOURS, outcome_chart

SVG = "{http://www.w3.org/2000/svg}"
MINUTE = 29_000_000  # some minute (epoch seconds // 60)


def svg_of(markup: str) -> ET.Element:
    return ET.fromstring(markup[: markup.index("</svg>") + len("</svg>")])


def test_each_outcome_of_a_minute_is_a_bar_in_its_colour_with_its_count() -> None:
    chart = outcome_chart([(MINUTE, {"sent": 30, "dead": 2}), (MINUTE + 1, {"sent": 10})])

    bars = svg_of(chart).findall(f"{SVG}rect")
    titles = sorted(bar.findtext(f"{SVG}title") or "" for bar in bars)
    assert [bar.get("fill") for bar in bars].count(COLOURS["sent"]) == 2
    assert [bar.get("fill") for bar in bars].count(COLOURS["dead"]) == 1
    assert any(title.endswith("dead: 2") for title in titles)
    assert "sent: 40" in chart  # the legend: the hour's total


def test_the_tallest_minute_fills_the_plot_and_others_scale_to_it() -> None:
    chart = outcome_chart([(MINUTE, {"sent": 50}), (MINUTE + 1, {"sent": 25})], height=200)

    heights = [float(bar.get("height") or 0) for bar in svg_of(chart).findall(f"{SVG}rect")]
    assert heights[0] == 2 * heights[1]


def test_an_hour_without_deliveries_says_so() -> None:
    chart = outcome_chart([(MINUTE + n, {}) for n in range(60)])

    assert svg_of(chart).findall(f"{SVG}rect") == []
    assert "no deliveries in this hour" in chart


def test_outcome_names_from_redis_are_escaped_in_the_chart() -> None:
    chart = outcome_chart([(MINUTE, {'<script>alert(1)</script>"': 3})])

    assert "<script>" not in chart
    assert "&lt;script&gt;" in chart
    svg_of(chart)  # still well-formed


def test_the_chart_has_a_text_alternative_with_the_totals() -> None:
    chart = outcome_chart([(MINUTE, {"sent": 3, "retried": 1})])

    label = svg_of(chart).get("aria-label") or ""
    assert "sent 3" in label
    assert "retried 1" in label
