"""The engines the worker puts roles in front of: one module per kind (`ollama.py`, Ollama's native
API), each with its request translation and answer parsing, under one interface (`engine.Engine`), on
one transport (`transport.py`: bounded, pooled, secrets never shown), one line reader (`lines.py`:
NDJSON and SSE) and one answer accumulator (`answer.py`). `configured.py` makes the one the settings name."""
