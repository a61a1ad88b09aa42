"""Box parsing, formatting and precision at IoU ≥ 0.5 (spec §10, grounding)."""

import re

Box = tuple[float, float, float, float]

_BOX = re.compile(r"\[*\[(.*?),(.*?),(.*?),(.*?)\]\]*")


def parse_box(reply: str) -> Box | None:
    """The first [[x1,y1,x2,y2]] in a reply as floats (outer brackets optional), or None."""
    match = _BOX.search(reply)
    if match is None:
        return None
    try:
        x1, y1, x2, y2 = (float(v) for v in match.groups())
    except ValueError:
        return None
    return x1, y1, x2, y2


def to_pixels(box: Box, width: float, height: float) -> Box:
    """Scale a parsed box to pixels: 0-1000 normalised if its values sum to ≥ 4, else fractions."""
    scale = 1000.0 if sum(box) >= 4 else 1.0
    x1, y1, x2, y2 = (v / scale for v in box)
    return x1 * width, y1 * height, x2 * width, y2 * height


def format_box(pixel_box: Box, width: float, height: float) -> str:
    """A pixel xyxy box in the answer syntax [[x1,y1,x2,y2]], as 0-1000 integers."""
    x1, y1, x2, y2 = pixel_box
    scaled = (x1 / width, y1 / height, x2 / width, y2 / height)
    ints = [min(1000, max(0, round(v * 1000))) for v in scaled]
    return "[[" + ",".join(str(v) for v in ints) + "]]"


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two xyxy boxes (0 when the union is empty)."""
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def grounding_hit(reply: str, gold_box: Box, width: float, height: float) -> float:
    """1.0 if the reply's box overlaps the gold pixel box with IoU ≥ 0.5, else 0.0."""
    box = parse_box(reply)
    if box is None:
        return 0.0
    pred = to_pixels(box, width, height)
    if not (pred[2] > pred[0] and pred[3] > pred[1]):
        return 0.0
    return float(iou(pred, tuple(gold_box)) >= 0.5)
