"""s-CDF against uniform distillation, data balancing and temperature tuning.

Fine-tunes the shipped default drafter with every method under one budget of steps and
training tokens, measures each on the held-out split (teacher-forced, per language), and
writes ``<out>/<prefix>.json``, ``.md`` and ``.png``.  The committed results were made by

    python benchmarks/scdf_compare.py --device cpu --seeds 0 \\
        --out benchmarks/results --prefix scdf_default_cpu --work-dir /tmp/scdf_runs

Every option of ``specfair scdf`` is accepted (``--steps``, ``--lr``, ``--methods``,
``--seeds``, ``--device cuda``, ...); this script is ``specfair scdf --compare``.
"""
from __future__ import annotations

import sys

from specfair.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["scdf", "--compare", *sys.argv[1:]]))
