"""Each slick's outline and its slick_id drawn on an overlay, so the picture and the GeoJSON
table match. Blocking: run in a thread."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import shapely
from PIL import Image, ImageDraw, ImageFont

from .geo.polygons import PixelSlick

# Okabe-Ito blue: apart from the orange tint and the grey sea for every common colour
# blindness; labels in white on it.
OUTLINE_RGB = (0, 114, 178)
LABEL_RGB = (255, 255, 255)
MAX_LABELS = 200  # past this, ids would cover the picture: the largest slicks get them


def draw_outlines(overlay: Path, slicks: Sequence[PixelSlick], width: int, height: int,
                  out: Path) -> None:
    """Write `overlay` with every slick's outline and id drawn (scene pixels scaled to the
    overlay's size) to `out`."""
    with Image.open(overlay) as picture:
        rgb = picture.convert("RGB")
    scale_x, scale_y = rgb.width / width, rgb.height / height
    draw = ImageDraw.Draw(rgb)
    font = ImageFont.load_default()
    for slick in slicks:
        for part in shapely.get_parts(slick.polygon):
            for ring in [part.exterior, *part.interiors]:
                points = [(x * scale_x, y * scale_y) for x, y in ring.coords]
                if len(points) >= 2:
                    draw.line(points, fill=OUTLINE_RGB, width=1)
    for slick in sorted(slicks, key=lambda s: s.slick_id)[:MAX_LABELS]:
        point = slick.polygon.representative_point()
        x, y = point.x * scale_x, point.y * scale_y
        text = str(slick.slick_id)
        left, top, right, bottom = draw.textbbox((x, y), text, font=font, anchor="mm")
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=OUTLINE_RGB)
        draw.text((x, y), text, fill=LABEL_RGB, font=font, anchor="mm")
    rgb.save(out, format="PNG", compress_level=1)
