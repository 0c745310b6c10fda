"""``spade inspect-maps IMAGE_ID``: an image and its stored teacher maps per triplet role, as a PNG grid."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from pipeline import paths
from pipeline.datasets.classes import read_classes
from pipeline.datasets.index import read_index
from pipeline.stores import InversionStore
from spade_core.diffusion.prompts import ROLE_NAMES, ROLE_OBJECT, ROLE_PREDICATE, ROLE_SUBJECT

ROLES = (ROLE_SUBJECT, ROLE_PREDICATE, ROLE_OBJECT)


def role_maps(attn: np.ndarray, roles: np.ndarray, triplet_index: np.ndarray, triplet: int) -> list[np.ndarray]:
    """Mean map over the tokens of each role (subject, predicate, object) of ``triplet``: 3 x [ha, wa]."""
    out = []
    for role in ROLES:
        sel = (triplet_index == triplet) & (roles == role)
        out.append(attn[sel].astype(np.float32).mean(0) if sel.any() else np.zeros(attn.shape[1:], np.float32))
    return out


def inspect_maps(image_id: str, out: Path | None = None, max_triplets: int = 6) -> Path:
    store = InversionStore.open(paths.INVERT_STORE)
    ids = store.image_ids
    if image_id not in ids:
        raise KeyError(f"image {image_id!r} is not in {paths.INVERT_STORE} (it holds {len(ids)} calibration images)")
    i = ids.index(image_id)
    data = store.read(i, i + 1)
    record = next(r for r in read_index(paths.index_path("train")) if r.image_id == image_id)
    classes = read_classes(paths.CLASSES_JSON)
    names, preds = classes.object_names, classes.predicate_names
    image = record.load_image()
    triplets = sorted(set(int(t) for t in data["triplet_index"][0] if t >= 0))[:max_triplets]
    if not triplets:
        raise ValueError(f"image {image_id!r}: its prompt kept no triplet")
    fig, axes = plt.subplots(len(triplets), 4, figsize=(10, 2.6 * len(triplets)), squeeze=False)
    for row, k in enumerate(triplets):
        s, o, p = record.relations[k]
        text = f"{names[record.category_ids[s]]} {preds[p]} {names[record.category_ids[o]]}"
        axes[row][0].imshow(image)
        axes[row][0].set_title(text, fontsize=8)
        for col, (role, amap) in enumerate(
            zip(ROLES, role_maps(data["attn"][0], data["roles"][0], data["triplet_index"][0], k)), start=1
        ):
            axes[row][col].imshow(image)
            axes[row][col].imshow(amap, cmap="jet", alpha=0.5, extent=(0, image.shape[1], image.shape[0], 0))
            axes[row][col].set_title(ROLE_NAMES[role], fontsize=8)
        for ax in axes[row]:
            ax.axis("off")
    fig.tight_layout()
    out = Path(out) if out else paths.INSPECTIONS / f"maps-{image_id}.png"  # never inside a DVC output
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
