"""The rules: accounts, sessions and tokens, codes, invites, rate limits.

No websockets and no SQL here. bcrypt and Redis are reached only through the small modules
``passwords`` and ``throttle``, so a reader of the imports can keep it that way.
"""
