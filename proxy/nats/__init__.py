"""The NATS wire protocol: the codec (ops, parsers, encoders), the optional C scanner, envelopes.

Pure and synchronous, like h11: bytes in, events out; events in, bytes out. No sockets here.
"""
