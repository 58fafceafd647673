"""The profile store: its interface, column codec, SQLite backend, compaction, retention and the selector it matches."""
