"""``python -m mtkd`` is the ``mtkd`` command."""

from .cli import main

raise SystemExit(main())
