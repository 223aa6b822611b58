"""The one shared connection to the NATS cluster: connect, reconnect, write journal."""
