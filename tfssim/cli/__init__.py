"""Command-line entry points: thin click wrappers over the library API."""
