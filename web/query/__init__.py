"""Queries over a store: merge by selector and time, the stacks type renderers take, flame graph, diff, exports."""
