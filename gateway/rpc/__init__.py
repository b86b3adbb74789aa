"""RPC dispatch: the method table and one handler module per area."""
