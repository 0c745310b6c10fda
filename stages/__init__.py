"""The thin front doors: one module per DVC stage (``python -m stages.<name>``) and the ``spade`` CLI.

DVC runs the stages as ``python -m stages.<name>`` with whatever ``python`` is first on PATH. Started from a
shell where the project's virtualenv is not active, that python lacks the project's packages: say so in one
line instead of a ``ModuleNotFoundError`` traceback from deep inside an import.
"""

import importlib.util
import sys

_MISSING = [name for name in ("torch", "diffusers", "zarr") if importlib.util.find_spec(name) is None]
if _MISSING:
    sys.stderr.write(
        f"error: {sys.executable} has no {', '.join(_MISSING)}: this is not the project's Python.\n"
        "hint: activate the project's virtualenv first (`source .venv/bin/activate`, made by `make install`), "
        "or run through make (`make repro`)\n"
    )
    raise SystemExit(1)
