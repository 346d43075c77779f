"""What the enforcer keeps and reads: profiles on disk, YAML documents, the SQLite state, the daemon's
settings."""
