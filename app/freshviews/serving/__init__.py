"""What a FastAPI app uses to serve cached views: the runtime its lifespan builds, and :func:`mount`.

::

    @asynccontextmanager
    async def lifespan(app):
        async with Serving(redis=redis, settings=ServingSettings()) as serving:
            yield {"serving": serving}

    app = FastAPI(lifespan=lifespan)
    mount(app, registry)  # GET /cache/{key}, /cache?key=..., /cache/stream, /cache/views

A route of the app's own reads through ``get_serving(request).read([...])``, which returns :class:`Snapshot`
values; :func:`serve` runs the app on the listening socket the event streams need.
"""

from freshviews.serving.listen import serve
from freshviews.serving.routes import cache_router, mount
from freshviews.serving.runtime import CacheUnavailableError, Serving, get_serving
from freshviews.serving.settings import ServingSettings
from freshviews.serving.snapshots import Snapshot

__all__ = [
    "CacheUnavailableError",
    "Serving",
    "ServingSettings",
    "Snapshot",
    "cache_router",
    "get_serving",
    "mount",
    "serve",
]
