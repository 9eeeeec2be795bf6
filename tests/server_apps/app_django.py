"""Django's ASGI handler, which does not speak the lifespan protocol."""
from __future__ import annotations

import asyncio

from django.conf import settings

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    SECRET_KEY="matrix-only-not-secret",
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
)

from django.core.asgi import get_asgi_application  # noqa: E402
from django.http import HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402

from moesifasgi import MoesifMiddleware  # noqa: E402
from tests.server_apps.common import SETTINGS, SLOW_SECONDS, slow_call_started  # noqa: E402


async def fast(request):
    return HttpResponse("fast")


async def slow(request):
    slow_call_started()
    await asyncio.sleep(SLOW_SECONDS)
    return HttpResponse("slow")


urlpatterns = [path("fast", fast), path("slow", slow)]

app = MoesifMiddleware(get_asgi_application(), settings=SETTINGS)
