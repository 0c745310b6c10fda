"""``spade teacher-report``: do the teacher's cross-attention maps localise what their tokens name?

``run(weights_dir, out_dir, ...)`` scores the teacher in ``weights_dir`` and the same model at initialisation
(rebuilt with :func:`build_teacher_init` from the seed, image size and VAE-statistics scenes recorded in
``weights_dir/training.json``) on held-out
synthetic scenes (stream 3, see :mod:`pipeline.teacher`): pointing game and top-k IoU per token kind, printed
as a markdown table and written to ``out_dir/teacher_report.{md,json}``, plus ``out_dir/teacher_maps.png``
(per scene: the image, then the subject / predicate / object maps of its first triplet, trained and init).
With ``store``, the maps an ``invert`` run stored are scored too, against the prepared dataset's masks.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from pipeline import paths
from pipeline.datasets.index import read_index
from pipeline.map_localisation import stored_map_localisation
from pipeline.stores import InversionStore
from pipeline.teacher import (
    SPLIT_HELDOUT,
    SPLIT_TRAIN,
    STATS_SCENES,
    TeacherData,
    build_teacher_init,
    evaluate_localisation,
    format_table,
    make_teacher_data,
)
from spade_core.diffusion.models import load_diffusion_models
from spade_core.diffusion.prompts import ROLE_OBJECT, ROLE_PREDICATE, ROLE_SUBJECT


def run(weights_dir: str | Path, out_dir: str | Path, num_scenes: int = 100, seed: int | None = None,
        grid_scenes: int = 4, threads: int | None = 1, store: str | Path | None = None) -> dict:
    """Write the report; returns ``{"trained": summary, "init": summary}`` (summary: kind -> pointing/iou/n),
    plus ``"stored"`` (:func:`stored_map_localisation` of the inversion store ``store``, with the prepared
    dataset's masks) when ``store`` is given."""
    if threads:
        torch.set_num_threads(threads)
    weights, out = Path(weights_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = weights / "training.json"
    record = json.loads(info.read_text()) if info.is_file() else {}
    train_seed, image_size = record.get("seed", 0), record.get("image_size", 128)
    seed = train_seed if seed is None else seed
    trained = load_diffusion_models(weights)
    with tempfile.TemporaryDirectory(prefix="spade-teacher-init-") as init_dir:
        stats = make_teacher_data(train_seed, SPLIT_TRAIN, record.get("stats_scenes", STATS_SCENES),
                                  trained.tokenizer, image_size).images
        init = load_diffusion_models(build_teacher_init(init_dir, train_seed, stats))
    held = make_teacher_data(seed, SPLIT_HELDOUT, num_scenes, trained.tokenizer, image_size)
    results: dict = {}
    maps = {}
    for name, models in (("trained", trained), ("init", init)):
        results[name], maps[name] = evaluate_localisation(models, held, keep_maps=grid_scenes)
    table = format_table(results)
    text = f"# Teacher localisation ({num_scenes} held-out synthetic scenes)\n\n{table}\n"
    if store is not None:
        results["stored"] = stored_localisation(Path(store))
        text += f"\n## Maps stored by `invert` ({store})\n\n{format_stored(results['stored'])}\n"
    print(text)
    (out / "teacher_report.md").write_text(text)
    (out / "teacher_report.json").write_text(json.dumps(results, indent=2) + "\n")
    if grid_scenes:
        save_grid(out / "teacher_maps.png", held, maps)
    return results


def stored_localisation(store: Path) -> dict[str, dict[str, float]]:
    """Localisation of the maps in an inversion store against the prepared training images' masks."""
    opened = InversionStore.open(store)
    return stored_map_localisation(opened, read_index(paths.index_path("train")), max_images=10**9)


def format_stored(summary: dict[str, dict[str, float]]) -> str:
    lines = ["| tokens | n | pointing | chance | top-k IoU |", "|---|---|---|---|---|"]
    for kind, d in summary.items():
        lines.append(f"| {kind} | {d['n']} | {d['pointing']:.2f} | {d['chance']:.2f} | {d['iou']:.2f} |")
    return "\n".join(lines)


def save_grid(path: Path, data: TeacherData, maps: dict[str, torch.Tensor]) -> None:
    """PNG: one row per (scene, model): image, subject / predicate / object maps of the first triplet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(len(m) for m in maps.values())
    fig, axes = plt.subplots(n * len(maps), 4, figsize=(8, 2.1 * n * len(maps)), squeeze=False)
    for i in range(n):
        prompt = data.prompts[i]
        for r, (name, m) in enumerate(maps.items()):
            row = axes[i * len(maps) + r]
            row[0].imshow(data.scenes[i].image)
            row[0].set_title(f"{name}", fontsize=7)
            words = data.triplets[i][0] if data.triplets[i] else ("", "", "")
            for ax, role, word in zip(row[1:], (ROLE_SUBJECT, ROLE_PREDICATE, ROLE_OBJECT), words):
                idx = torch.nonzero(prompt.token_mask(0, role))[:, 0] if prompt.num_triplets_kept else []
                grid = m[i][idx].mean(0).numpy() if len(idx) else np.zeros(m.shape[-2:])
                ax.imshow(grid, cmap="magma")
                ax.set_title(word, fontsize=7)
            for ax in row:
                ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
