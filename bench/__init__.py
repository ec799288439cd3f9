"""The benchmarks: each prints its figures and ratios in one run. Run them from the repository root as
modules (`.venv/bin/python -m bench.proxy_bench`, or `make bench` for all), so the test servers and
the Ollama stand-in (`tests`) import as they do under pytest."""
