"""Where applications come in: the NATS port (client connections), the HTTP ingest, outbound buffers."""
