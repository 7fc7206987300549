"""`headstart serve RUN`: an HTTP API and a drag-and-drop page for a trained classifier.

    from headstart.serve import create_app, serve
    serve("runs/my-run", port=8000)             # http://127.0.0.1:8000/  (loopback by default)
    app = create_app("runs/my-run", engine="torch")   # a FastAPI app, e.g. for TestClient

Concurrent requests are micro-batched (serve/batching.py) into single model calls.
"""

from headstart.serve.app import ENGINES, create_app, resolve_engine, serve
from headstart.serve.batching import BatchStats, MicroBatcher

__all__ = ["ENGINES", "BatchStats", "MicroBatcher", "create_app", "resolve_engine", "serve"]
