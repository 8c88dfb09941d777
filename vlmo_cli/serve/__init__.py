"""``vlmo serve``: search, embed, score and classify over HTTP (FastAPI + uvicorn) with dynamic batching."""

from .app import ServeOptions, create_app
from .server import ServerThread
from .service import SearchService

__all__ = ["SearchService", "ServeOptions", "ServerThread", "create_app"]
