"""What a FastAPI app mounts to serve cached views: the read routes, the event stream, and their runtime."""

from freshviews.serving.fastpath import FastReads
from freshviews.serving.listen import serve
from freshviews.serving.routes import cache_router
from freshviews.serving.runtime import Serving, get_serving
from freshviews.serving.settings import ServingSettings

__all__ = ["FastReads", "Serving", "ServingSettings", "cache_router", "get_serving", "serve"]
