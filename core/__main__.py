"""``python -m tracklink``: the same as the ``tracklink`` command."""

from .cli import main

raise SystemExit(main())
