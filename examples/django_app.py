"""A Django project in one file, served as ASGI, with moesifasgi around Django's handler.

Django's ASGI handler does not speak the lifespan protocol; the middleware
still commits every answered call when the server stops (see the README,
"Frameworks and servers").

    MOESIF_APPLICATION_ID=... uvicorn examples.django_app:app --workers 2

In a real project the last lines go in `asgi.py`, after `get_asgi_application()`.
"""
from __future__ import annotations

import json
import os

from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret"),
        MIDDLEWARE=[],
        INSTALLED_APPS=[],
    )

from django.core.asgi import get_asgi_application  # noqa: E402
from django.http import JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402

from moesifasgi import MoesifMiddleware  # noqa: E402


async def read_item(request, item_id: int):
    return JsonResponse({"id": item_id, "q": request.GET.get("q")})


@csrf_exempt  # keeps a view async only from Django 5.0; 4.2, the last for Python 3.9, needs a plain def
def create_order(request):
    order = json.loads(request.body or b"{}")
    return JsonResponse({"order_id": 1001, "items": order.get("items", [])}, status=201)


urlpatterns = [path("items/<int:item_id>", read_item), path("orders", create_order)]


def identify_user(request, response):
    # The callbacks get a Starlette Request built from the ASGI scope, not Django's
    # HttpRequest: Django's request.user does not exist there; read headers instead.
    return request.headers.get("x-user-id")


# Around Django's whole handler: every call is recorded, 404s included.
app = MoesifMiddleware(get_asgi_application(), settings={
    "APPLICATION_ID": os.environ.get("MOESIF_APPLICATION_ID", "demo-application-id"),
    "IDENTIFY_USER": identify_user,
    "REQUEST_BODY_MASKS": ["password", "card_number"],
})
