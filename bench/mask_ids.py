"""Counting a mask's ids two ways, in one process: every pixel, against by runs
(segserve.images.id_counts). For the classes present (the X-Segserve-Classes header: PIL's
histogram against ids_present) and for a JSON answer's length, counted before it is built
(np.bincount against json_mask_bytes). Masks of 520x520: one class, a few regions (what a
segmentation looks like), and noise.

    python bench/mask_ids.py [-n 300]

Prints the median ms of each way per mask.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from PIL import Image

from segserve.images import ids_present, json_mask_bytes


def masks(size: int = 520) -> dict[str, np.ndarray]:
    yy, xx = np.mgrid[:size, :size]
    regions = np.zeros((size, size), np.uint8)
    regions[(yy - 200) ** 2 + (xx - 260) ** 2 < 150**2] = 15
    regions[350:, :200] = 7
    regions[:80, 400:] = 12
    noise = np.random.default_rng(0).integers(0, 21, (size, size), dtype=np.uint8)
    return {"one class": np.full((size, size), 10, np.uint8), "regions": regions, "noise": noise}


def every_pixel(mask: np.ndarray) -> list[int]:
    return [i for i, count in enumerate(Image.fromarray(mask).histogram()) if count]


def json_bytes_every_pixel(mask: np.ndarray) -> int:
    return json_mask_bytes(mask, np.bincount(mask.ravel(), minlength=256))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=300)
    args = parser.parse_args()
    pairs = ((every_pixel, ids_present), (json_bytes_every_pixel, json_mask_bytes))
    for name, mask in masks().items():
        cells = []
        for pair in pairs:
            assert pair[0](mask) == pair[1](mask), (name, pair)
            for way in pair:
                times = []
                for _ in range(args.n):
                    started = time.perf_counter()
                    way(mask)
                    times.append(time.perf_counter() - started)
                cells.append(f"{way.__name__} {statistics.median(times) * 1000:.3f} ms")
        print(f"{name:10s} " + ", ".join(cells))


if __name__ == "__main__":
    main()
