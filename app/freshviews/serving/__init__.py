"""What a FastAPI app uses to serve cached views: the runtime its lifespan builds, and the routes.

::

    @asynccontextmanager
    async def lifespan(app):
        async with Serving(redis=redis, keys=Keys(), settings=ServingSettings()) as serving:
            yield {"serving": serving}

    app = FastAPI(lifespan=lifespan)
    app.include_router(cache_router(registry))  # GET /cache/{key}, /cache?key=..., /cache/stream, /cache/views
    app.add_middleware(FastReads, registry=registry)  # hot keys answered before routing

A route of the app's own reads through ``get_serving(request).read([...])``, which returns :class:`Snapshot`
values; :func:`serve` runs the app on the listening socket the event streams need.
"""

from freshviews.serving.fastpath import FastReads
from freshviews.serving.listen import serve
from freshviews.serving.routes import cache_router
from freshviews.serving.runtime import Serving, get_serving
from freshviews.serving.settings import ServingSettings
from freshviews.serving.snapshots import Snapshot

__all__ = ["FastReads", "Serving", "ServingSettings", "Snapshot", "cache_router", "get_serving", "serve"]
