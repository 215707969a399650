"""Deliveries by outcome over the last hour, as an SVG drawn on the server.

One stacked bar per minute (``notifier.metrics.tallies.outcomes_per_minute``),
one colour per outcome, a legend with the hour's totals. No script and no
inline style (the console's Content-Security-Policy allows neither): colours
are SVG presentation attributes. Every name from Redis is escaped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from markupsafe import Markup, escape

__all__ = ["COLOURS", "outcome_chart"]

COLOURS: dict[str, str] = {
    "sent": "#1b7f3b",
    "queued": "#6b8fd6",
    "deferred": "#8aa0c8",
    "retried": "#c98a00",
    "held": "#b3995d",
    "ambiguous": "#a35d00",
    "fallback": "#7a4fb3",
    "duplicate": "#8c8c8c",
    "skipped": "#b0b0b0",
    "rate_limited": "#d4679b",
    "rejected": "#5c2d91",
    "dead": "#c0262d",
}
"""Outcomes of ``notifier_deliveries_total`` (docs/DESIGN.md §7); others are grey."""

_OTHER = "#444444"


def _colour(outcome: str) -> str:
    return COLOURS.get(outcome, _OTHER)


def outcome_chart(
    minutes: Sequence[tuple[int, Mapping[str, int]]], *, width: int = 720, height: int = 200
) -> Markup:
    """The SVG (with a text legend) for per-minute outcome counts, oldest minute first."""
    totals: Counter[str] = Counter()
    for _, counts in minutes:
        totals.update(counts)
    order = sorted(totals, key=lambda name: (-totals[name], name))
    peak = max((sum(counts.values()) for _, counts in minutes), default=0)
    described = ", ".join(f"{name} {totals[name]:,}" for name in order) or "no deliveries"
    label = f"Deliveries per minute over the last {len(minutes)} minutes: {described}"
    left, bottom, top = 48, 22, 8
    plot_height = height - bottom - top
    slot = (width - left) / max(len(minutes), 1)
    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{escape(label)}">',
        f"<title>{escape(label)}</title>",
        f'<line x1="{left}" y1="{top + plot_height}" x2="{width}" y2="{top + plot_height}" '
        'stroke="#666" stroke-width="1"/>',
        f'<text x="{left - 6}" y="{top + 10}" text-anchor="end" font-size="11" '
        f'fill="#333">{peak:,}</text>',
        f'<text x="{left - 6}" y="{top + plot_height}" text-anchor="end" font-size="11" '
        'fill="#333">0</text>',
    ]
    for index, (minute, counts) in enumerate(minutes):
        x = left + index * slot
        y = float(top + plot_height)
        for name in sorted(counts, key=lambda n: (order.index(n) if n in order else 0, n)):
            count = counts[name]
            if count <= 0 or peak == 0:
                continue
            bar = plot_height * count / peak
            y -= bar
            parts.append(
                f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{max(slot - 2, 1):.1f}" '
                f'height="{bar:.1f}" fill="{_colour(name)}">'
                f"<title>{_clock(minute)} {escape(name)}: {count:,}</title></rect>"
            )
        if index % 10 == 0:
            parts.append(
                f'<text x="{x:.1f}" y="{height - 6}" font-size="11" fill="#333">'
                f"{_clock(minute)}</text>"
            )
    if peak == 0:
        parts.append(
            f'<text x="{(width + left) / 2:.0f}" y="{top + plot_height / 2:.0f}" '
            'text-anchor="middle" font-size="14" fill="#555">no deliveries in this hour</text>'
        )
    parts.append("</svg>")
    legend = "".join(
        f'<li><svg width="12" height="12" aria-hidden="true"><rect width="12" height="12" '
        f'fill="{_colour(name)}"/></svg> {escape(name)}: {totals[name]:,}</li>'
        for name in order
    )
    return Markup("".join(parts) + f'<ul class="legend">{legend}</ul>')  # noqa: S704 - escaped above


def _clock(minute: int) -> str:
    return datetime.fromtimestamp(minute * 60, UTC).strftime("%H:%M")
