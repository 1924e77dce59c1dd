"""The WSGI entry point of plain `gunicorn wsgi:app` (DATABASE_URL set; see metamcp.app.serve).

`make run` and the Docker image use gunicorn's config instead (metamcp.gunicorn_conf), whose
master prepares the database once for all workers.
"""

from metamcp.app import serve

app = serve()
