"""Stage ``models``: build the tiny default models (or locate real weights) and record their identities.

Output: ``artifacts/models/`` (diffusers-layout tiny SD folder, tiny open_clip config + checkpoint: the
embedded ones of ``teacher/`` for ``model.preset: tiny``, random ones for ``tiny-random``) and
``artifacts/models/manifest.json``. Run as ``python -m stages.models`` or ``spade models``.
"""

from __future__ import annotations

from pipeline import paths
from pipeline.io import prepare_outputs
from pipeline.models import build_manifest
from pipeline.params import ScopedParams

PARAMS = (
    "model.preset",
    "model.sd_path",
    "model.clip_arch",
    "model.clip_checkpoint",
    "model.seed",
    "model.image_size",
)


def run(params: ScopedParams) -> None:
    prepare_outputs(paths.MODELS)  # sweep killed runs' temporaries, fail fast if not writable
    manifest = build_manifest(params.model, paths.MODELS)
    print(
        f"models: preset={manifest['preset']} teacher={manifest['diffusion']['identity']} "
        f"clip={manifest['clip']['identity']} -> {paths.MODELS_MANIFEST}"
    )


if __name__ == "__main__":
    from pipeline.runner import stage_main

    stage_main("models", PARAMS, run)
