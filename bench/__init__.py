"""Benchmarks: `make bench` (`python -m bench.run`) and the parser/engine micro-benchmarks."""
