"""`python -m proxy` is the `kpi-sidecar` command."""

from proxy.cli import main

raise SystemExit(main())
