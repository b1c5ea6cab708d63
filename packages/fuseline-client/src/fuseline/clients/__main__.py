"""``python -m fuseline.clients``: the ``fuseline`` command without its script."""

from fuseline.clients.cli import main

raise SystemExit(main())
