"""podflame: web."""
