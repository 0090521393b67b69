#!/usr/bin/env python3
"""Reference for the paper's line map (Mask2Contour): a random mask with holes,
islands, thin lines and corner contacts, and OpenCV's drawing of its outer
contours exactly as the authors do it:

    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(white, contours, -1, 0, 3)

    .venv/bin/pip install opencv-python-headless numpy pillow
    .venv/bin/python tools/make_contour_fixtures.py

Writes tests/fixtures/contours/{mask,line_map}.png (deterministic for the seed).
"""

import os

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "contours")


def main():
    rng = np.random.default_rng(2507_19280)
    h, w = 96, 128
    m = np.zeros((h, w), np.uint8)
    for _ in range(14):
        cx, cy = rng.integers(0, w), rng.integers(0, h)
        ax, ay = rng.integers(3, 18), rng.integers(3, 18)
        cv2.ellipse(m, (int(cx), int(cy)), (int(ax), int(ay)), float(rng.uniform(0, 180)), 0, 360, 1, -1)
        if rng.uniform() < 0.5:  # a hole, sometimes with an island
            cv2.ellipse(m, (int(cx), int(cy)), (int(ax) // 2, int(ay) // 2), 0, 0, 360, 0, -1)
            if rng.uniform() < 0.5:
                m[cy, cx] = 1
    for _ in range(3):  # thin lines, some diagonal (corner contacts)
        p = tuple(int(v) for v in rng.integers(0, [w, h]))
        q = tuple(int(v) for v in rng.integers(0, [w, h]))
        cv2.line(m, p, q, 1, 1)
    m[rng.integers(0, h, 40), rng.integers(0, w, 40)] ^= 1  # speckle
    m[0, :10] = 1  # on the border
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    lines = np.full(m.shape, 255, np.uint8)
    cv2.drawContours(lines, contours, -1, 0, 3)
    os.makedirs(OUT, exist_ok=True)
    cv2.imwrite(os.path.join(OUT, "mask.png"), m * 255)
    cv2.imwrite(os.path.join(OUT, "line_map.png"), lines)
    print(f"{len(contours)} outer contours, {int((lines == 0).sum())} black pixels; cv2 {cv2.__version__}")


if __name__ == "__main__":
    main()
