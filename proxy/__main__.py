"""`python -m proxy` is the `kpi-sidecar` command."""

from proxy.cli.main import main

raise SystemExit(main())
