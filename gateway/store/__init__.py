"""Persistence: the Store interface and its SQLite implementation."""
