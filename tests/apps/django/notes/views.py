import os

from django.db import connection
from django.http import HttpResponseNotAllowed, JsonResponse

from notes.models import Note


def health(request):
    """Up when the database answers: how many notes, over which connection, which commit."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            tls = bool(cursor.fetchone()[0])
        else:
            tls = False
    return JsonResponse(
        {
            "app": "django-sample",
            "version": os.environ.get("APP_VERSION", "unknown"),
            "database": connection.vendor,
            "tls": tls,
            "notes": Note.objects.count(),
        }
    )


def index(request):
    """The notes, newest last (GET); a new one from the request's body (POST)."""
    if request.method == "POST":
        text = request.body.decode("utf-8", "replace").strip()[:200]
        Note.objects.create(text=text)
    elif request.method != "GET":
        return HttpResponseNotAllowed(["GET", "POST"])
    return JsonResponse({"notes": [n.text for n in Note.objects.order_by("id")[:20]]})
