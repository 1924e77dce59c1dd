"""The WSGI entry point: `gunicorn -c python:metamcp.gunicorn_conf wsgi:app`."""

from metamcp.app import create_app

app = create_app()
