"""REST API blueprints (flask-smorest): auth tokens, the server registry and health."""
