"""The README's tables tell the truth about the code."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from gateway.config import ENV_PREFIX, Settings
from gateway.errors import CloseCode, ErrorCode

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


def test_every_setting_is_in_the_configuration_table_with_its_default() -> None:
    table = _section("Configuration")
    for f in dataclasses.fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        row = next((line for line in table.splitlines() if line.startswith(f"| `{flag}` |")), None)
        assert row is not None, f"{flag} missing from the README configuration table"
        assert f"`{ENV_PREFIX}{f.name.upper()}`" in row
        if not f.metadata["secret"] and f.default not in (None, "", ()):
            shown = ", ".join(f.default) if isinstance(f.default, tuple) else str(f.default)
            assert f"`{shown}`" in row, f"{flag}: README default differs from {f.default!r}"


def test_every_error_code_is_in_the_error_table() -> None:
    codes = {int(m) for m in re.findall(r"^\| (\d{3}) \|", _section("Error codes"), re.M)}
    assert codes == {int(c) for c in ErrorCode}


def test_every_close_code_is_in_the_close_table() -> None:
    codes = {int(m) for m in re.findall(r"^\| (\d{4}) \|", _section("Close codes"), re.M)}
    assert codes == {int(c) for c in CloseCode}
