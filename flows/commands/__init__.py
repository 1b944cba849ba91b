"""CLI sub-commands, one per file; each exposes register(subparsers)."""
