"""The embedded dataset: digit (and shape) glyphs drawn from stroke definitions under random
affine distortions, generated on the fly and deterministically from a seed. No file, no
download: the rotation, scale, shear and translation are the geometric variation deformable
convolutions were made for.

A glyph is a list of strokes (polylines) in the unit square, x right and y down. Each sample
moves the strokes through its own affine map and draws them with Pillow at twice the final
resolution, then box-filters down (anti-aliasing)."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

Stroke = list[tuple[float, float]]


def _arc(cx: float, cy: float, rx: float, ry: float, start: float, stop: float,
         points: int = 24) -> Stroke:
    """An elliptic arc from angle `start` to `stop` in degrees (0 = right, 90 = down)."""
    angles = np.radians(np.linspace(start, stop, points))
    return [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles]


def _star() -> Stroke:
    radii = [0.42 if k % 2 == 0 else 0.18 for k in range(11)]
    return [(0.5 + r * math.cos(math.radians(-90 + 36 * k)),
             0.52 + r * math.sin(math.radians(-90 + 36 * k))) for k, r in enumerate(radii)]


DIGITS: dict[str, list[Stroke]] = {
    "0": [_arc(0.5, 0.5, 0.3, 0.42, 0, 360, 40)],
    "1": [[(0.38, 0.22), (0.52, 0.1), (0.52, 0.9)]],
    "2": [_arc(0.5, 0.32, 0.25, 0.21, 170, 400) + [(0.24, 0.88), (0.8, 0.88)]],
    "3": [_arc(0.5, 0.29, 0.22, 0.19, 190, 450), _arc(0.5, 0.68, 0.25, 0.21, 270, 520)],
    "4": [[(0.66, 0.9), (0.66, 0.1), (0.2, 0.66), (0.82, 0.66)]],
    "5": [[(0.74, 0.12), (0.34, 0.12), (0.3, 0.47)] + _arc(0.5, 0.65, 0.25, 0.24, 225, 510)],
    "6": [_arc(0.56, 0.55, 0.3, 0.43, 290, 170), _arc(0.5, 0.67, 0.23, 0.21, 0, 360, 32)],
    "7": [[(0.22, 0.12), (0.78, 0.12), (0.42, 0.9)]],
    "8": [_arc(0.5, 0.3, 0.2, 0.19, 0, 360, 32), _arc(0.5, 0.69, 0.25, 0.21, 0, 360, 32)],
    "9": [_arc(0.5, 0.33, 0.22, 0.21, 0, 360, 32), [(0.72, 0.33), (0.6, 0.9)]],
}

SHAPES: dict[str, list[Stroke]] = {
    "square": [[(0.15, 0.15), (0.85, 0.15), (0.85, 0.85), (0.15, 0.85), (0.15, 0.15)]],
    "triangle": [[(0.5, 0.1), (0.9, 0.85), (0.1, 0.85), (0.5, 0.1)]],
    "plus": [[(0.5, 0.1), (0.5, 0.9)], [(0.1, 0.5), (0.9, 0.5)]],
    "star": [_star()],
    "wave": [[(0.1 + 0.8 * t / 30, 0.5 - 0.22 * math.sin(2 * math.pi * t / 15)) for t in range(31)]],
    "arrow": [[(0.1, 0.5), (0.9, 0.5)], [(0.6, 0.22), (0.9, 0.5), (0.6, 0.78)]],
}

# The named variants: "glyphs" is the ten digits, "glyphs16" adds six shapes.
VARIANTS: dict[str, dict[str, list[Stroke]]] = {
    "glyphs": DIGITS,
    "glyphs16": {**DIGITS, **SHAPES},
}

SIZE = 32  # output side in pixels
GLYPH = 20.0  # side of the undistorted glyph box in pixels (as MNIST's 20 px digits in 28)
SUPERSAMPLE = 2


def render(strokes: list[Stroke], affine: np.ndarray, width: float, ink: float) -> np.ndarray:
    """One glyph as a float32 (SIZE, SIZE) image in [0, 1]; `affine` is a 2x3 map from
    glyph-centred pixel coordinates to image pixel coordinates."""
    big = SIZE * SUPERSAMPLE
    image = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(image)
    value = int(round(255 * ink))
    w = max(1, int(round(width * SUPERSAMPLE)))
    for stroke in strokes:
        pts = (np.asarray(stroke) - 0.5) * GLYPH
        pts = (pts @ affine[:, :2].T + affine[:, 2]) * SUPERSAMPLE
        xy = [tuple(p) for p in pts]
        draw.line(xy, fill=value, width=w, joint="curve")
        r = w / 2
        for x, y in (xy[0], xy[-1]):  # round caps
            draw.ellipse((x - r, y - r, x + r, y + r), fill=value)
    small = image.resize((SIZE, SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def random_affine(rng: np.random.Generator) -> np.ndarray:
    """Rotation ±35°, scale 0.65-1.2 with ±15% aspect, shear ±0.4, shift ±4 px."""
    angle = math.radians(rng.uniform(-35, 35))
    scale = rng.uniform(0.65, 1.2)
    aspect = rng.uniform(0.85, 1.15)
    shear = rng.uniform(-0.4, 0.4)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    linear = rot @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag([scale * aspect, scale / aspect])
    shift = SIZE / 2 + rng.uniform(-4, 4, size=2)
    return np.concatenate([linear, shift[:, None]], axis=1)


def make_glyphs(count: int, seed: int = 0, variant: str = "glyphs",
                noise: float = 0.08) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """`count` samples with balanced classes: images (count, 1, 32, 32) float32 in [0, 1],
    labels (count,) int64 and the class names. The same seed gives the same bytes."""
    glyphs = VARIANTS[variant]
    classes = list(glyphs)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(count) % len(classes)).astype(np.int64)
    images = np.empty((count, 1, SIZE, SIZE), dtype=np.float32)
    for i, label in enumerate(labels):
        affine = random_affine(rng)
        width = rng.uniform(1.6, 3.0)
        ink = rng.uniform(0.7, 1.0)
        images[i, 0] = render(glyphs[classes[label]], affine, width, ink)
    if noise:
        images += rng.normal(0.0, noise, size=images.shape).astype(np.float32)
        np.clip(images, 0.0, 1.0, out=images)
    return images, labels, classes
