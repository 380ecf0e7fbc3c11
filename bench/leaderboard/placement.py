"""Where chart labels go: text widths estimated without a browser, and a greedy placement that keeps labels
apart, inside the plot and off the markers.

The plots are SVG text written in Python, so nothing measures the text at build time. :func:`text_width` uses
the advance widths of DejaVu Sans, which is wider than the usual system fonts (Segoe UI, Roboto, Helvetica,
Arial), so a label laid out with it is never wider on screen than the room it was given.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = [
    "ASCENT", "DESCENT", "Box", "Placed", "text_width", "text_height", "place_point_labels", "stack_labels",
    "needed_height", "leader", "place_line_labels",
]

ASCENT, DESCENT = 0.93, 0.24
"""Font ascent and descent in em (DejaVu Sans): an SVG text's box runs from ``baseline - ASCENT·size`` to
``baseline + DESCENT·size``."""

# Advance widths of DejaVu Sans Book in em, rounded up; anything else counts as the widest glyph here.
_WIDTHS: dict[str, float] = {
    **dict.fromkeys("ijl'|", 0.28), **dict.fromkeys(".,:;!", 0.32), " ": 0.32,
    **dict.fromkeys("ft", 0.40), **dict.fromkeys("()[]{}", 0.40), "r": 0.42, "-": 0.37, "/": 0.34,
    **dict.fromkeys("sz", 0.53), "c": 0.56, "_": 0.50, "I": 0.30, "J": 0.30,
    **dict.fromkeys("kvxy", 0.60), **dict.fromkeys("aeo", 0.62), **dict.fromkeys("bdghnpqu", 0.64),
    **dict.fromkeys("0123456789", 0.64), "w": 0.82, "m": 0.98, **dict.fromkeys("+=<>~#", 0.84),
    **dict.fromkeys("ABCDEFGHKLNOPQRSTUVXYZ", 0.78), "M": 0.87, "W": 0.99, "%": 0.96, "&": 0.78, "@": 1.0,
}
_WIDEST = 1.0


def text_width(text: str, size: float, *, bold: bool = False) -> float:
    """Estimated width in pixels of ``text`` at font ``size`` px (an upper bound for the usual sans fonts)."""
    em = sum(_WIDTHS.get(c, _WIDEST) for c in text)
    return em * size * (1.1 if bold else 1.0) + 1.0


def text_height(size: float) -> float:
    """Height in pixels of one line of text (ascent plus descent) at font ``size`` px."""
    return (ASCENT + DESCENT) * size


@dataclass(frozen=True)
class Box:
    """An axis-aligned rectangle in SVG pixels (``y`` grows downwards)."""

    x0: float
    y0: float
    x1: float
    y1: float

    def overlaps(self, other: Box, pad: float = 0.0) -> bool:
        """True when the boxes share area, or come closer than ``pad``."""
        return (
            self.x0 < other.x1 + pad and other.x0 < self.x1 + pad
            and self.y0 < other.y1 + pad and other.y0 < self.y1 + pad
        )

    def inside(self, other: Box) -> bool:
        """True when this box lies within ``other``."""
        return self.x0 >= other.x0 and self.x1 <= other.x1 and self.y0 >= other.y0 and self.y1 <= other.y1


@dataclass(frozen=True)
class Placed:
    """Where one label went: the text's anchor point and ``text-anchor``, and the box it takes."""

    x: float
    baseline: float
    anchor: str
    """``"start"`` (label right of its point) or ``"end"`` (left of it)."""
    box: Box
    nudged: bool
    """True when the label sits away from its point's height; the plot then draws :func:`leader`."""


Segment = tuple[float, float, float, float]
"""A line segment ``(x1, y1, x2, y2)``."""


def _offsets(first: float, limit: float, step: float) -> list[float]:
    """0, then +first, -first, +(first + step), -(first + step), ... up to ``limit`` either way."""
    out = [0.0]
    k = 0
    while first + k * step <= limit:
        out += [first + k * step, -(first + k * step)]
        k += 1
    return out


def _crosses(box: Box, segment: Segment) -> bool:
    """True when the line segment ``(x1, y1, x2, y2)`` passes through ``box`` (Liang-Barsky clipping)."""
    x1, y1, x2, y2 = segment
    dx, dy = x2 - x1, y2 - y1
    t0, t1 = 0.0, 1.0
    for p, q in ((-dx, x1 - box.x0), (dx, box.x1 - x1), (-dy, y1 - box.y0), (dy, box.y1 - y1)):
        if p == 0:
            if q < 0:
                return False
            continue
        t = q / p
        if p < 0:
            t0 = max(t0, t)
        else:
            t1 = min(t1, t)
        if t0 > t1:
            return False
    return True


def _candidates(
    point: tuple[float, float],
    width: float,
    bounds: Box,
    offsets: Sequence[float],
    *,
    size: float,
    gap: float,
) -> Iterator[Placed]:
    """Label positions inside ``bounds``, nearest first: beside the point (right, then left), then moved
    vertically by each of ``offsets`` and, from there, sideways in steps (an angled leader line clears the
    markers stacked above and below the point)."""
    x, y = point
    height = text_height(size)
    for dy in offsets:
        for dx in (0.0,) if dy == 0 else (0.0, 12.0, 24.0, 36.0):
            near, far = gap + dx, gap + dx + width
            sides = [("start", x + near, x + far), ("end", x - far, x - near)]
            fits = [s for s in sides if s[1] >= bounds.x0 and s[2] <= bounds.x1]
            if not fits and dx == 0:  # wider than either side: the side with more room, pushed inside
                anchor, x0, x1 = max(sides, key=lambda s: min(s[2], bounds.x1) - max(s[1], bounds.x0))
                shift = max(bounds.x0 - x0, 0.0) - max(x1 - bounds.x1, 0.0)
                fits = [(anchor, x0 + shift, x1 + shift)]
            for anchor, x0, x1 in fits:
                box = Box(x0, y + dy - height / 2, x1, y + dy + height / 2)
                if box.y0 >= bounds.y0 and box.y1 <= bounds.y1:
                    text_x = x0 if anchor == "start" else x1
                    yield Placed(text_x, box.y0 + ASCENT * size, anchor, box, dy != 0)


def _owned(
    candidate: Placed, line: Segment, own: Box, others: Sequence[Box], clearance: float = 14.0
) -> bool:
    """True when a reader will tie the label to its own marker: its near end is closer to that marker than to
    any other, or, for a label with a leader line, at least ``clearance`` pixels from every other marker."""
    end_x, end_y = line[2], line[3]

    def distance(box: Box) -> float:
        return math.hypot(end_x - (box.x0 + box.x1) / 2, end_y - (box.y0 + box.y1) / 2)

    mine = distance(own)
    return all(distance(m) > mine or (candidate.nudged and distance(m) >= clearance) for m in others)


def _tangled(candidate: Placed, line: Segment, boxes: Sequence[Box], leaders: Sequence[Segment]) -> bool:
    """True when the candidate covers an earlier leader line, or its own leader would cross a box."""
    if any(_crosses(candidate.box, other) for other in leaders):
        return True
    return candidate.nudged and any(_crosses(b, line) for b in boxes)


def leader(point: tuple[float, float], placed: Placed, radius: float = 5.5) -> Segment:
    """The leader line of a nudged label: from the edge of its marker to the middle of the label's near
    side."""
    x, y = point
    end_x = placed.box.x0 - 1 if placed.anchor == "start" else placed.box.x1 + 1
    end_y = (placed.box.y0 + placed.box.y1) / 2
    length = math.hypot(end_x - x, end_y - y) or 1.0
    return (x + (end_x - x) * radius / length, y + (end_y - y) * radius / length, end_x, end_y)


def place_point_labels(
    points: Sequence[tuple[float, float]],
    widths: Sequence[float],
    bounds: Box,
    *,
    size: float = 11.0,
    gap: float = 8.0,
    radius: float = 5.5,
    pad: float = 1.5,
    step: float = 1.0,
    taken: Sequence[Box] = (),
) -> list[Placed]:
    """Place one label beside each point so that no two labels overlap, no label covers a marker or another
    label's leader line, and every label stays inside ``bounds``.

    Greedy, top to bottom: a label goes right of its point (left when it does not fit), at the point's height
    if that spot is free, else on the other side; else it is moved clear of its own marker's height (up or
    down, the nearest free height first, ``step`` pixels at a time) and tied to the marker by a leader line
    (:func:`leader`). When no height avoids every marker and leader line, those may be covered; two labels
    never overlap as long as ``bounds`` is at least :func:`needed_height` tall.

    Args:
        points: Marker centres in SVG pixels.
        widths: Width of each label (:func:`text_width`).
        bounds: The area labels must stay in (usually the plot area).
        size: Font size in pixels.
        gap: Horizontal distance from the marker centre to the label.
        radius: Marker radius (markers are kept clear of labels).
        pad: Minimum clearance between two labels, and between a label and a marker.
        step: Nudging step in pixels.
        taken: Boxes placed before (other labels on the plot) that these labels must not overlap.

    Returns:
        One :class:`Placed` per point, in the order of ``points``.
    """
    height = text_height(size)
    markers = [Box(x - radius, y - radius, x + radius, y + radius) for x, y in points]
    order = sorted(range(len(points)), key=lambda i: (points[i][1], points[i][0], i))
    taken = list(taken)
    leaders: list[Segment] = []
    placed: dict[int, Placed] = {}
    first = height / 2 + radius + pad  # a nudged label clears its own marker's height
    offsets = _offsets(first, bounds.y1 - bounds.y0, step)
    for i in order:
        x, y = points[i]
        own = markers[i]
        choice = None
        for strict in (2, 1, 0):  # 2: clear of markers and leader lines; 1: of markers; 0: of labels only
            others = [m for k, m in enumerate(markers) if k != i] if strict else []
            for candidate in _candidates((x, y), widths[i], bounds, offsets, size=size, gap=gap):
                box = candidate.box
                if any(box.overlaps(b, pad) for b in [*taken, *others]):
                    continue
                line = leader((x, y), candidate, radius)
                if strict == 2 and (_tangled(candidate, line, [*taken, *others], leaders)
                                    or not _owned(candidate, line, own, others)):
                    continue
                choice = candidate
                break
            if choice:
                break
        if choice is None:  # no free height at all (bounds too small): beside the point, overlapping
            anywhere = Box(bounds.x0, -math.inf, bounds.x1, math.inf)
            choice = next(_candidates((x, y), widths[i], anywhere, [0.0], size=size, gap=gap))
        taken.append(choice.box)
        if choice.nudged:
            leaders.append(leader((x, y), choice, radius))
        placed[i] = choice
    return [placed[i] for i in range(len(points))]


def place_line_labels(
    ys: Sequence[float], widths: Sequence[float], right: float, bounds: Box, *, size: float = 10.0,
    pad: float = 1.5, avoid: Sequence[Box] = (),
) -> list[Box]:
    """Labels of horizontal lines at heights ``ys``, right-aligned at ``right``: each just above its line,
    else just below it, else moved further away until it overlaps neither a label placed before it (top to
    bottom) nor a box of ``avoid`` (markers, other lines)."""
    height = text_height(size)
    boxes: dict[int, Box] = {}
    for i in sorted(range(len(ys)), key=lambda k: (ys[k], k)):
        near = height / 2 + 1
        for k in range(int(bounds.y1 - bounds.y0) + 1):
            found = None
            for centre in (ys[i] - near - k, ys[i] + near + k):
                box = Box(right - widths[i], centre - height / 2, right, centre + height / 2)
                if box.inside(bounds) and not any(box.overlaps(b, pad) for b in [*boxes.values(), *avoid]):
                    found = box
                    break
            if found:
                boxes[i] = found
                break
        else:
            boxes[i] = Box(right - widths[i], ys[i] - near - height / 2, right, ys[i] - near + height / 2)
    return [boxes[i] for i in range(len(ys))]


def stack_labels(
    centres: Sequence[float], widths: Sequence[float], lo: float, hi: float, *, pad: float = 4.0
) -> list[tuple[float, int]]:
    """Labels on a horizontal line, each centred on its ``x`` where possible: returns ``(x0, row)`` per label,
    where ``x0`` is the label's left edge (kept within ``[lo, hi]``) and ``row`` the first row (0, 1, ...)
    in which it overlaps no label placed before it. Labels are placed left to right."""
    rows: list[list[tuple[float, float]]] = []
    out: dict[int, tuple[float, int]] = {}
    for i in sorted(range(len(centres)), key=lambda k: (centres[k], k)):
        width = widths[i]
        x0 = min(max(centres[i] - width / 2, lo), max(hi - width, lo))
        x1 = x0 + width
        row = next(
            (r for r, spans in enumerate(rows) if all(x1 + pad <= a or b + pad <= x0 for a, b in spans)),
            len(rows),
        )
        if row == len(rows):
            rows.append([])
        rows[row].append((x0, x1))
        out[i] = (x0, row)
    return [out[i] for i in range(len(centres))]


def needed_height(n_labels: int, size: float = 11.0, pad: float = 1.5) -> float:
    """Plot height that always leaves room for ``n_labels`` labels in :func:`place_point_labels`."""
    return math.ceil(2 * (text_height(size) + pad) * n_labels + 10)
