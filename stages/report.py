"""``python -m stages.report``: the Markdown evaluation report (``spade report``) on stdout.

Tables shaped like the paper's Table 1 and Table 4 from ``artifacts/evaluate/metrics.parquet``, plus an
ablation table over ``dvc exp show --json``; the logic is :mod:`pipeline.reporting`.
"""

from __future__ import annotations

if __name__ == "__main__":
    from pipeline.reporting import run_report

    print(run_report(), end="")
