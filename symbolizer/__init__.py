"""podflame: symbolizer."""
