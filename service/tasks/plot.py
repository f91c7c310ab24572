"""An evaluation's cost against accuracy as a standalone SVG (no plotting library): one point per threshold,
with the fixed 0.85, the recommended threshold and the strong model alone marked."""

from __future__ import annotations

from xml.sax.saxutils import escape

from service.tasks.evaluation import Point, Sweep

WIDTH, HEIGHT = 760, 480
LEFT, RIGHT, TOP, BOTTOM = 80, 30, 40, 60


def _scale(values: list[float], low_pad: float = 0.0) -> tuple[float, float]:
    low, high = min(values) - low_pad, max(values)
    return (low, high) if high > low else (low - 1, high + 1)


def render(result: Sweep, title: str) -> str:
    points = [*result.points, result.all_strong]
    xs = [float(p.cost_per_1000_usd) for p in points]
    ys = [float(p.accuracy) * 100 for p in points]
    x0, x1 = _scale([0.0, *xs])
    y0, y1 = _scale(ys, low_pad=1.0)

    def x(value: float) -> float:
        return LEFT + (value - x0) / (x1 - x0) * (WIDTH - LEFT - RIGHT)

    def y(value: float) -> float:
        return HEIGHT - BOTTOM - (value - y0) / (y1 - y0) * (HEIGHT - TOP - BOTTOM)

    def at(p: Point) -> tuple[float, float]:
        return x(float(p.cost_per_1000_usd)), y(float(p.accuracy) * 100)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" '
        'font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="22" text-anchor="middle" font-size="15">{escape(title)}</text>',
    ]
    for i in range(6):  # grid and ticks
        gx, gy = x0 + (x1 - x0) * i / 5, y0 + (y1 - y0) * i / 5
        parts.append(f'<line x1="{x(gx):.1f}" y1="{TOP}" x2="{x(gx):.1f}" y2="{HEIGHT - BOTTOM}" stroke="#eee"/>')
        parts.append(f'<line x1="{LEFT}" y1="{y(gy):.1f}" x2="{WIDTH - RIGHT}" y2="{y(gy):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{x(gx):.1f}" y="{HEIGHT - BOTTOM + 18}" text-anchor="middle">${gx:.3f}</text>')
        parts.append(f'<text x="{LEFT - 8}" y="{y(gy) + 4:.1f}" text-anchor="end">{gy:.1f}%</text>')
    parts.append(
        f'<text x="{WIDTH / 2}" y="{HEIGHT - 18}" text-anchor="middle">cost per 1,000 items (USD)</text>'
        f'<text transform="translate(20 {HEIGHT / 2}) rotate(-90)" text-anchor="middle">accuracy</text>'
    )
    line = " ".join(f"{px:.1f},{py:.1f}" for px, py in (at(p) for p in result.points))
    parts.append(f'<polyline points="{line}" fill="none" stroke="#3858e9" stroke-width="1.5"/>')
    for p in result.points:
        px, py = at(p)
        parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2" fill="#3858e9"><title>{_tip(p)}</title></circle>')
    marks = [
        (result.fixed, "#e8893a", f"fixed {result.fixed.threshold}"),
        (result.all_strong, "#c0392b", "strong only"),
    ]
    if result.at_strong is not None and result.at_strong != result.recommended:
        marks.append((result.at_strong, "#8e44ad", f"cheapest ≥ strong only: {result.at_strong.threshold}"))
    if result.recommended is not None:
        which = "strong only" if result.recommended.threshold is None else result.recommended.threshold
        marks.append((result.recommended, "#2f9e6e", f"recommended: {which}"))
    legend_y = HEIGHT - BOTTOM - 16 * len(marks) - 8
    for i, (point, colour, label) in enumerate(marks):
        px, py = at(point)
        parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="6" fill="{colour}"><title>{_tip(point)}</title></circle>')
        ly = legend_y + 16 * i
        text = f"{label}: {point.accuracy * 100:.1f}%, ${point.cost_per_1000_usd}"
        parts.append(f'<circle cx="{WIDTH - RIGHT - 330}" cy="{ly:.1f}" r="5" fill="{colour}"/>')
        parts.append(f'<text x="{WIDTH - RIGHT - 320}" y="{ly + 4:.1f}">{escape(text)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _tip(p: Point) -> str:
    name = "strong only" if p.threshold is None else f"threshold {p.threshold}"
    accuracy = f"{p.accuracy * 100:.1f}%"
    return f"{name}: accuracy {accuracy}, escalated {p.escalation_rate * 100:.1f}%, ${p.cost_per_1000_usd} per 1,000"
