"""Seeding a dataset root: the real Fashion-MNIST when reachable, else a labelled stand-in.

The stand-in has the same four IDX files: 10 classes of 28x28 grayscale garments drawn
with random placement, size, shading, texture and noise, so that a CNN learns them but
not trivially (shirt, t-shirt, pullover and coat share most of their outline).
"""

from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dataset import idx
from dataset.layout import BASE_FILES, CLASS_NAMES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeedResult:
    root: Path
    real: bool
    train: int
    test: int
    note: str


def _shape(draw: ImageDraw.ImageDraw, label: int, rng: np.random.Generator) -> None:
    """Draw one garment of class ``label`` on a 56x56 canvas (downscaled later)."""
    s = rng.uniform(0.65, 1.2)
    cx, cy = 28 + rng.uniform(-6, 6), 28 + rng.uniform(-6, 6)
    shade = int(rng.uniform(70, 255))

    def box(x0: float, y0: float, x1: float, y1: float, fill: int = shade) -> None:
        draw.rectangle([cx + x0 * s, cy + y0 * s, cx + x1 * s, cy + y1 * s], fill=fill)

    def poly(points: list[tuple[float, float]], fill: int = shade) -> None:
        draw.polygon([(cx + x * s, cy + y * s) for x, y in points], fill=fill)

    sleeve = rng.uniform(-2, 2)
    if label in (0, 2, 4, 6):  # upper-body garments: body plus sleeves
        box(-10, -16, 10, 18)
        long_sleeve = label in (2, 4)
        length = 30 if long_sleeve else 8
        poly([(-10, -16), (-10 - length * 0.45, -16 + length + sleeve), (-16, -6 + length), (-10, -4)])
        poly([(10, -16), (10 + length * 0.45, -16 + length + sleeve), (16, -6 + length), (10, -4)])
        if label == 4:  # coat: opening down the front
            box(-1, -16, 1, 18, fill=int(shade * 0.3))
        if label == 6:  # shirt: collar and buttons
            poly([(-5, -16), (0, -8), (5, -16)], fill=int(shade * 0.4))
            for y in range(-6, 16, 6):
                box(-1, y, 1, y + 1.5, fill=int(shade * 0.5))
    elif label == 1:  # trouser
        gap = rng.uniform(1, 3)
        box(-9, -18, 9, -10)
        box(-9, -10, -gap, 20)
        box(gap, -10, 9, 20)
    elif label == 3:  # dress
        poly([(-6, -18), (6, -18), (14 + sleeve, 20), (-14 - sleeve, 20)])
    elif label == 5:  # sandal: thin straps over a sole
        box(-18, 10, 18, 14)
        for x in np.linspace(-14, 10, int(rng.integers(3, 6))):
            poly([(x, 10), (x + 3, 10), (x + 8, -2), (x + 5, -2)])
    elif label == 7:  # sneaker: low wedge
        poly([(-20, 14), (20, 14), (20, 6), (4, -2), (-8, 0), (-20, 6)])
        box(-20, 11, 20, 14, fill=int(shade * 0.6))
    elif label == 8:  # bag: body and handle
        box(-14, -4, 14, 18)
        draw.arc([cx - 8 * s, cy - 16 * s, cx + 8 * s, cy + 4 * s], 180, 360, fill=shade,
                 width=max(2, int(3 * s)))
    else:  # ankle boot: shaft and foot
        box(-10, -20, 2, 12)
        poly([(-10, 4), (20, 8), (20, 16), (-10, 16)])


# Classes people confuse in the real data too: a few labels are drawn from the same group.
_CONFUSABLE = ((0, 2, 4, 6), (5, 7, 9))
AMBIGUOUS_FRACTION = 0.03


def generate(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` stand-in images (uint8, n x 28 x 28) and balanced labels."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 10).astype(np.uint8)
    rng.shuffle(labels)
    images = np.empty((n, 28, 28), np.uint8)
    for i, label in enumerate(labels):
        canvas = Image.new("L", (56, 56), 0)
        _shape(ImageDraw.Draw(canvas), int(label), rng)
        if rng.random() < 0.5:  # occlusion: part of the garment hidden
            x, y = rng.integers(0, 44, size=2)
            ImageDraw.Draw(canvas).rectangle([x, y, x + rng.integers(6, 16), y + rng.integers(6, 16)],
                                             fill=int(rng.uniform(0, 60)))
        canvas = canvas.rotate(rng.uniform(-15, 15), resample=Image.BILINEAR)
        images[i] = np.asarray(canvas.resize((28, 28), Image.BILINEAR))
    texture = rng.normal(0, 30, size=images.shape) + rng.uniform(-40, 20, size=(n, 1, 1))
    mask = images > 0
    noisy = images.astype(np.float32) + texture * mask + rng.normal(0, 20, size=images.shape)
    for group in _CONFUSABLE:  # ambiguous examples, as in any hand-labelled dataset
        members = np.flatnonzero(np.isin(labels, group))
        flip = members[rng.random(members.size) < AMBIGUOUS_FRACTION]
        labels[flip] = rng.choice(group, size=flip.size)
    return np.clip(noisy, 0, 255).astype(np.uint8), labels


def write_standin(root: Path, train: int = 60_000, test: int = 10_000, seed: int = 2017) -> SeedResult:
    root.mkdir(parents=True, exist_ok=True)
    for split, count, split_seed in (("train", train, seed), ("test", test, seed + 1)):
        images, labels = generate(count, split_seed)
        images_name, labels_name = BASE_FILES[split]
        idx.write_images(root / images_name, images)
        idx.write_labels(root / labels_name, labels)
    note = (
        f"GENERATED STAND-IN DATA: the real Fashion-MNIST could not be reached; {root} holds a "
        f"labelled synthetic dataset in the same format ({train} train / {test} test images, "
        f"10 classes). Accuracies on it are not Fashion-MNIST results."
    )
    return SeedResult(root, False, train, test, note)


def write_png_increment(root: Path, batch: str, n: int, seed: int) -> Path:
    """Push ``n`` labelled images as class folders of PNGs: ``increments/<batch>/<class>/``."""
    images, labels = generate(n, seed)
    folder = root / "increments" / batch
    staging = root / "increments" / f".{batch}.partial"
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        target = staging / CLASS_NAMES[label] / f"{batch}-{i:05d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, "L").save(target)
    staging.rename(folder)  # appears at once, as a finished push
    return folder


_REAL_LOADER = """
import sys, numpy as np, tensorflow_datasets as tfds
from pathlib import Path
from dataset import idx
from dataset.layout import BASE_FILES
root = Path(sys.argv[1])
for split, tfds_split in (("train", "train"), ("test", "test")):
    ds = tfds.as_numpy(tfds.load("fashion_mnist", split=tfds_split, batch_size=-1,
                                 as_supervised=True, data_dir=str(root / ".tfds")))
    images, labels = ds
    images_name, labels_name = BASE_FILES[split]
    idx.write_images(root / images_name, images[..., 0].astype(np.uint8))
    idx.write_labels(root / labels_name, labels.astype(np.uint8))
"""


def fetch_real(root: Path, timeout: float = 60.0) -> SeedResult | None:
    """The real Fashion-MNIST through tensorflow-datasets, or None when it cannot be reached."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            [sys.executable, "-P", "-c", _REAL_LOADER, str(root)],  # -P: our modules, not the cwd's
            capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        log.info("tensorflow-datasets did not answer within %.0fs", timeout)
        return None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        log.info("tensorflow-datasets could not load fashion_mnist: %s", last[:200])
        return None
    return SeedResult(root, True, 60_000, 10_000, f"real Fashion-MNIST in {root}")


def seed(root: Path, *, offline: bool, train: int = 60_000, test: int = 10_000) -> SeedResult:
    """Ensure ``root`` holds the four IDX files: already there, real, or the stand-in."""
    if all((root / name).is_file() for pair in BASE_FILES.values() for name in pair):
        return SeedResult(root, False, 0, 0, f"using the existing dataset in {root}")
    if not offline:
        real = fetch_real(root)
        if real is not None:
            return real
    return write_standin(root, train, test)
