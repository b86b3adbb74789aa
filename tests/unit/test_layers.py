"""Dependencies point inward (STYLE.md): a test that reads the imports keeps it so.

transport -> protocol; transport -> rpc -> services -> store / registry / mail. The protocol core
does no I/O; services reach SQLite, Redis and websockets only through the interfaces that store/,
registry/ and mail/ implement (bcrypt only through services/passwords.py).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"

IO_LIBRARIES = {"asyncio", "websockets", "aiosqlite", "sqlite3", "redis", "aiosmtplib", "socket"}

#: package -> top-level modules (or gateway subpackages) it must not import
FORBIDDEN: dict[str, set[str]] = {
    "protocol": IO_LIBRARIES | {"bcrypt", "gateway.transport", "gateway.rpc", "gateway.services",
                                "gateway.store", "gateway.registry", "gateway.app"},
    "services": {"websockets", "aiosqlite", "sqlite3", "redis", "aiosmtplib", "bcrypt",
                 "gateway.transport", "gateway.rpc", "gateway.app"},
    "rpc": {"websockets", "aiosqlite", "sqlite3", "redis", "bcrypt", "gateway.transport",
            "gateway.app"},
    "store": {"websockets", "gateway.transport", "gateway.rpc", "gateway.app"},
    "registry": {"websockets", "aiosqlite", "gateway.transport", "gateway.rpc", "gateway.app"},
    "mail": {"websockets", "aiosqlite", "redis", "gateway.transport", "gateway.rpc",
             "gateway.app"},
}
ALLOWED = {("services/passwords.py", "bcrypt")}  # the one small interface to bcrypt


def imports_of(path: Path) -> set[str]:
    """Imports that run: those under ``if TYPE_CHECKING:`` only name types for the checker."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING",
                                                                    "typing.TYPE_CHECKING"):
            node.body = []
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def violates(name: str, banned: str) -> bool:
    return name == banned or name.startswith(banned + ".")


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_point_inward(package: str) -> None:
    found = []
    for path in sorted((GATEWAY / package).glob("*.py")):
        rel = f"{package}/{path.name}"
        for name in imports_of(path):
            for banned in FORBIDDEN[package]:
                if violates(name, banned) and (rel, banned) not in ALLOWED:
                    found.append(f"{rel} imports {name}")
    assert not found, "\n".join(found)


def test_the_check_sees_imports() -> None:
    """The walker must find both import forms, or the test above could never fail."""
    names = imports_of(GATEWAY / "transport" / "connection.py")
    assert "websockets.exceptions" in names and "gateway.protocol.connection" in names
    assert "gateway.app" not in names  # imported there for type checking only
