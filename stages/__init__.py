"""The thin front doors: one module per DVC stage (``python -m stages.<name>``) and the ``spade`` CLI."""
