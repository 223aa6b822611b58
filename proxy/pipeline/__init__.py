"""The publish path between the ports and the upstream: resources measured, the spool on disk."""
