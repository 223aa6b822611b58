"""The backpressure decision core: pure, synchronous, deterministic; `engine.Engine` is its facade."""
