"""Configuration: the schema (msgspec Structs), sources and layers, runtime changes."""
