"""podflame: podflame."""
