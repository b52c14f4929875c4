"""Settings from the environment, as coop-infra releases give them."""

import os
import urllib.parse

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "only-for-tests")
DEBUG = False
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost").split(",")
INSTALLED_APPS = ["django.contrib.contenttypes", "notes"]
MIDDLEWARE = []
ROOT_URLCONF = "coopnotes.urls"
WSGI_APPLICATION = "coopnotes.wsgi.application"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def database(url: str) -> dict:
    """DATABASE_URL (postgresql://user:password@host:port/name?sslmode=...) as Django's."""
    parts = urllib.parse.urlsplit(url)
    options = dict(urllib.parse.parse_qsl(parts.query))
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parts.path.lstrip("/"),
        "USER": urllib.parse.unquote(parts.username or ""),
        "PASSWORD": urllib.parse.unquote(parts.password or ""),
        "HOST": parts.hostname,
        "PORT": parts.port or 5432,
        "OPTIONS": options,
    }


if os.environ.get("DATABASE_URL"):
    DATABASES = {"default": database(os.environ["DATABASE_URL"])}
else:
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "/tmp/notes.sqlite3"}}
