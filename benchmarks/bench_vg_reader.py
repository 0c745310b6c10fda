"""Benchmark: the VG-150 reader (``pipeline.datasets.vg``) on a release-sized file, and its memory.

Writes a boxes-only VG-format triple at the release's scale (108,077 ``image_data.json`` entries, the four
corrupt ids among them, so 108,073 h5 images; ~11.5 boxes and ~6 relations per image, 150 object / 50 predicate
classes, 70 % split 0): the h5 with the release's keys, dtypes and ``(cx, cy, w, h)`` 1024-frame box encoding,
``VG-SGG-dicts.json`` and ``image_data.json``. No images are written: the reader runs with
``check_images=False`` (it trusts ``image_data.json``'s sizes), so what is measured is the h5 / JSON reading,
validation, box decoding and the train filters. Rows:

* ``open``: constructing ``VGReader`` only (parsing the two JSON files, checking the h5 layout, loading the
  per-image range arrays: the part that is O(images) by design);
* ``stream``: ``VGReader.iter_split`` record by record, nothing kept (how a consumer should use it);
* ``list``: ``read_vg_split`` (every record of the split kept in a list).

Each row at a quarter of the file and at the whole file, each in a fresh process (so no row reuses memory an
earlier one freed): records/s and the peak RSS growth over the row. Streaming should cost what opening costs
(per-image arrays, one block of box / relation rows) and not grow with the records read; the list rows grow
with the records kept.

    python benchmarks/bench_vg_reader.py [--images 108077] [--splits train,test] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import PeakMemory

from pipeline.datasets.classes import read_data_file
from pipeline.datasets.synthetic_vg import write_vg_files
from pipeline.datasets.vg import CORRUPT_IMAGE_IDS, VGReader, read_vg_split


def write_boxes_only_vg(out: Path, num_entries: int, seed: int = 0) -> tuple[Path, Path, Path]:
    """A VG-format triple of ``num_entries`` ``image_data.json`` entries (ids 1..N), boxes and relations only."""
    rng = np.random.default_rng(seed)
    classes = read_data_file("vg_classes.json")
    ids = np.arange(1, num_entries + 1)
    widths, heights = rng.integers(300, 801, num_entries), rng.integers(300, 801, num_entries)
    kept = ~np.isin(ids, list(CORRUPT_IMAGE_IDS))  # the h5 has no rows for the corrupt images
    w, h = widths[kept], heights[kept]
    n_img = int(kept.sum())
    n_obj = rng.integers(1, 23, n_img)  # mean 11.5
    n_rel = np.where(n_obj > 1, rng.integers(0, 13, n_img), 0)  # mean ~6
    first_box = np.concatenate([[0], np.cumsum(n_obj)[:-1]])
    first_rel = np.concatenate([[0], np.cumsum(n_rel)[:-1]])
    # boxes in the 1024 frame of their image: frame size (fw, fh), corner (x, y) and size inside it
    img_of_box = np.repeat(np.arange(n_img), n_obj)
    scale = 1024 / np.maximum(w, h)
    fw, fh = np.floor(w * scale).astype(np.int64)[img_of_box], np.floor(h * scale).astype(np.int64)[img_of_box]
    x = (rng.random(len(img_of_box)) * (fw - 2)).astype(np.int64)
    y = (rng.random(len(img_of_box)) * (fh - 2)).astype(np.int64)
    bw = 1 + (rng.random(len(img_of_box)) * (fw - x - 1)).astype(np.int64)
    bh = 1 + (rng.random(len(img_of_box)) * (fh - y - 1)).astype(np.int64)
    boxes = np.stack([x + bw // 2, y + bh // 2, bw, bh], 1).astype(np.int32)
    # relations: two distinct boxes of the same image
    img_of_rel = np.repeat(np.arange(n_img), n_rel)
    k = n_obj[img_of_rel]
    s = (rng.random(len(img_of_rel)) * k).astype(np.int64)
    o = (s + 1 + (rng.random(len(img_of_rel)) * (k - 1)).astype(np.int64)) % k
    rel = np.stack([s, o], 1) + first_box[img_of_rel][:, None]
    arrays = {
        "active_object_mask": np.ones((len(boxes), 1), dtype=bool),
        "boxes_1024": boxes,
        "boxes_512": boxes // 2,
        "img_to_first_box": first_box.astype(np.int32),
        "img_to_last_box": (first_box + n_obj - 1).astype(np.int32),
        "img_to_first_rel": np.where(n_rel > 0, first_rel, -1).astype(np.int32),
        "img_to_last_rel": np.where(n_rel > 0, first_rel + n_rel - 1, -1).astype(np.int32),
        "labels": rng.integers(1, len(classes["thing_classes"]) + 1, (len(boxes), 1)),
        "predicates": rng.integers(1, len(classes["predicate_classes"]) + 1, (len(rel), 1)),
        "relationships": rel.astype(np.int32),
        "split": np.where(rng.random(n_img) < 0.7, 0, 2).astype(np.int32),
    }
    entries = [{"width": int(a), "height": int(b), "image_id": int(i), "url": "", "coco_id": None, "flickr_id": None}
               for i, a, b in zip(ids, widths, heights)]
    files = write_vg_files(out, arrays, entries, classes["thing_classes"], classes["predicate_classes"])
    return files.h5, files.dicts, files.image_data


def measure(files: tuple[Path, Path, Path], split: str, mode: str) -> dict:
    """One row, in this process: ``open`` (construct the reader only), ``stream`` or ``list``."""
    root = files[0].parent / "VG_100K"
    peak = PeakMemory(torch.device("cpu"))
    t0 = time.perf_counter()
    if mode == "list":
        n = len(read_vg_split(*files, root, split, check_images=False).records)
    else:
        with VGReader(*files, root, check_images=False) as reader:
            n = 0 if mode == "open" else sum(1 for _ in reader.iter_split(split))
    seconds = time.perf_counter() - t0
    return {"records": n, "seconds": seconds, "records_per_s": n / seconds if n else 0.0,
            "peak_growth_mib": peak.growth_mib()}


def measure_in_child(files: tuple[Path, Path, Path], split: str, mode: str) -> dict:
    """:func:`measure` in a fresh interpreter, so that no row reuses memory an earlier row freed."""
    cmd = [sys.executable, __file__, "--measure", *map(str, files), split, mode]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=108_077, help="image_data.json entries of the whole file")
    ap.add_argument("--splits", default="train,test")
    ap.add_argument("--json", default=None)
    ap.add_argument("--measure", nargs=5, default=None, help=argparse.SUPPRESS)  # internal: one row
    args = ap.parse_args()
    if args.measure:
        h5, dicts, image_data, split, mode = args.measure
        print(json.dumps(measure((Path(h5), Path(dicts), Path(image_data)), split, mode)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        full = write_boxes_only_vg(Path(tmp) / "full", args.images)
        write_s = time.perf_counter() - t0
        quarter = write_boxes_only_vg(Path(tmp) / "quarter", args.images // 4)
        size_mib = full[0].stat().st_size / 2**20
        print(f"wrote {args.images} entries ({size_mib:.0f} MiB h5) in {write_s:.1f} s; load avg "
              f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
        for split in args.splits.split(","):
            for mode in ("open", "stream", "list"):
                if mode == "open" and split != args.splits.split(",")[0]:
                    continue
                for label, files in (("1/4", quarter), ("full", full)):
                    rows.append({"split": split if mode != "open" else "-", "mode": mode, "file": label,
                                 **measure_in_child(files, split, mode)})
    print("| split | mode | file | records | seconds | records/s | peak RSS growth MiB |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['split']} | {r['mode']} | {r['file']} | {r['records']} | {r['seconds']:.1f} | "
              f"{r['records_per_s']:.0f} | {r['peak_growth_mib']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
