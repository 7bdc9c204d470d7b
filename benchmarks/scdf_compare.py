"""s-CDF against uniform distillation, data balancing and temperature tuning.

Fine-tunes the shipped default drafter with every method under one budget of steps,
training tokens and knob search: every method gets ``--search-budget`` candidate knob
settings (learning rate, epsilon for s-CDF, the balancing mix, the temperature's lr; see
`specfair.scdf_select`), each run with every seed (``--seeds``, default 0,1,2) and measured
on the **validation** split; the best on validation is then measured on the **held-out**
split, the only figures reported (teacher-forced, per language, with intervals across
seeds), with each chosen drafter's measured generative speed-up (the audit's timing path;
``--no-generate`` skips it, ``--generate-seeds 0`` times seed 0 only) and its figures on an
out-of-domain corpus (``--ood-corpus``, default Django's catalogues when installed).
Writes ``<out>/<prefix>.json`` (with what was searched and chosen), ``.md`` and ``.png``.
For example

    python benchmarks/scdf_compare.py --device cpu --seeds 0,1,2 \\
        --out benchmarks/results --prefix scdf_select_cpu --work-dir /tmp/scdf_runs

(the older ``scdf_default_*`` results predate the validation split: they were made with one
fixed setting per method and report the split the settings were picked on).

Every option of ``specfair scdf`` is accepted (``--steps``, ``--lr``, ``--methods``,
``--seeds``, ``--device cuda``, ...); this script is ``specfair scdf --compare``.
"""
from __future__ import annotations

import sys

from specfair.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["scdf", "--compare", *sys.argv[1:]]))
