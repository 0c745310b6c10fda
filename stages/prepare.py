"""Stage ``prepare``: build the validated dataset index.

``data.source: synthetic`` generates the embedded PSG-format dataset from ``prepare.seed``; ``psg`` reads
``data.psg_json`` with files under ``data.image_root``; ``vg`` reads the Visual Genome VG-150 triple
(``data.vg_h5``, ``data.vg_dicts``, ``data.vg_image_data``, images under ``data.image_root``); ``synthetic-vg``
generates the embedded scenes as a VG-format triple and reads it the same way (box records). The work and the
outputs (``index/{train,test}.parquet``, ``classes.json``, ``split.json``, ``report.json``, ``dataset/`` for
synthetic and synthetic-vg) are described in :mod:`pipeline.datasets.prepare` and
:mod:`pipeline.datasets.prepare_vg`. ``out_dir`` is ``pipeline.paths.PREPARED`` (``data/prepared``) unless a caller
passes another folder; it is replaced only when the whole stage succeeded, so a failure never leaves partial
output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline import paths
from pipeline.datasets.prepare import prepare_dataset
from pipeline.io import prepare_outputs

PARAMS = ("data", "prepare")


def run(params: Any, out_dir: str | Path = paths.PREPARED, progress: bool = True) -> None:
    """Run the stage with ``params`` (an object with ``.data`` and ``.prepare`` sections) into ``out_dir``."""
    out_dir = Path(out_dir)
    prepare_outputs(out_dir)  # sweep killed runs' temporaries, fail fast if not writable
    report = prepare_dataset(params, out_dir, progress)
    train, test = report["train"], report["test"]
    objects = "boxes" if report.get("annotation") == "boxes" else "segments"
    print(
        f"prepare: {train['images']} train / {test['images']} test images, "
        f"{train['segments']} / {test['segments']} {objects}, "
        f"{train['relations']} / {test['relations']} relations, {report['duplicates_removed']} duplicates "
        f"removed, {report['num_skipped']} records skipped -> {out_dir}"
    )


if __name__ == "__main__":
    from pipeline.runner import stage_main

    stage_main("prepare", PARAMS, run)
