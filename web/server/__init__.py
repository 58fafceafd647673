"""The HTTP server: the Flask app factory, the API and UI blueprints, static files and templates."""
