"""Sans-I/O protocol core: frame bytes and a timestamp in, events and reply bytes out.

Nothing here awaits or reads a clock: the transport passes ``now`` in and arms one timer at the
deadline the core asks for.
"""
