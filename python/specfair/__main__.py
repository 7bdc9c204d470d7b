"""``python -m specfair ...`` (and ``torchrun -m specfair scdf ...``): the `specfair` command."""
from .cli import main

raise SystemExit(main())
