"""``python -m fuseline.broker.http``: serve a broker over HTTP."""

from fuseline.broker.http._serve import main

raise SystemExit(main())
