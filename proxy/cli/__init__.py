"""The `kpi-sidecar` command: run, status, loadtest, fleet, the dev runner, log formats, ports file."""
