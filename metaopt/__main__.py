"""``python -m metaopt``: the ``metaopt`` command (see ``metaopt/cli.py``)."""
from .cli import main

raise SystemExit(main())
