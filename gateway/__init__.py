"""Osmium Gateway: the authentication, session and invite layer of the Osmium Chat Protocol."""

__version__ = "0.1.0"
