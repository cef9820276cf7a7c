"""A copy of kermany-224 whose train/ and val/ images keep the central C of their width, resized back to
224x224 (a centre crop of the original, had it been squashed from W/H = 1/C); test/ is copied unchanged.
docs/benchmarks.md §12.4. The source is only read.

Usage: python scripts/kermany_crop_copy.py C SRC DST     e.g.  0.75 ../shared/data/kermany-224 /tmp/kcrop75
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from PIL import Image


def main(fraction: float, src: Path, dst: Path) -> None:
    if dst.exists():
        sys.exit(f"{dst} exists; give a new folder")
    for f in sorted(src.rglob("*")):
        if not f.is_file():
            continue
        out = dst / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        if f.relative_to(src).parts[0] == "test":
            shutil.copyfile(f, out)
            continue
        with Image.open(f) as im:
            w, h = im.size
            k = round(w * fraction)
            left = (w - k) // 2
            im.crop((left, 0, left + k, h)).resize((w, h), Image.BILINEAR).save(out, quality=95)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(float(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
