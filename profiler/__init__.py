"""podflame: profiler."""
