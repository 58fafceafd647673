"""podflame server: normalize (wire -> store rows), store/, query/, server/ (Flask)."""
