"""Settings: flags beat GATEWAY_* variables beat defaults; parsing and validation; --help."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import config
from gateway.__main__ import build_parser, main
from gateway.config import Settings

VENV_BIN = Path(sys.executable).parent


def settings(argv: list[str], env: dict[str, str] | None = None) -> Settings:
    return config.from_sources(build_parser().parse_args(["serve", *argv]), env or {})


def test_defaults_with_no_flags_and_no_environment() -> None:
    assert settings([]) == Settings()
    assert Settings().port == 8765 and Settings().max_message_bytes == 64 * 1024


def test_flag_beats_environment_beats_default() -> None:
    env = {"GATEWAY_PORT": "9001", "GATEWAY_HOST": "0.0.0.0", "GATEWAY_PING_INTERVAL": "2.5"}
    s = settings(["--port", "9002"], env)
    assert s.port == 9002           # flag over variable
    assert s.host == "0.0.0.0"      # variable over default
    assert s.ping_interval == 2.5
    assert s.ping_timeout == Settings().ping_timeout  # neither: default


def test_environment_is_only_read_with_the_prefix() -> None:
    assert settings([], {"PORT": "1", "port": "2", "GATEWAY_port": "3"}).port == 8765


@pytest.mark.parametrize("text, value", [
    ("1", True), ("true", True), ("YES", True), ("on", True),
    ("0", False), ("false", False), ("No", False), ("off", False),
])
def test_bool_from_environment(text: str, value: bool) -> None:
    assert settings([], {"GATEWAY_COMPRESSION": text}).compression is value


def test_bool_flags_both_ways_and_over_environment() -> None:
    assert settings(["--compression"]).compression is True
    assert settings(["--no-compression"], {"GATEWAY_COMPRESSION": "yes"}).compression is False
    assert settings(["--no-allow-missing-origin"]).allow_missing_origin is False


def test_tuples_from_repeated_flags_and_comma_lists() -> None:
    s = settings(["--origins", "https://a.example", "--origins", "https://b.example,https://c.example"],
                 {"GATEWAY_ORIGINS": "https://ignored.example"})
    assert s.origins == ("https://a.example", "https://b.example", "https://c.example")
    s = settings([], {"GATEWAY_ENTRYPOINTS": " gw1:443:1 , gw2:443 ,"})
    assert s.entrypoints == ("gw1:443:1", "gw2:443")
    assert settings([]).known_clients == Settings().known_clients


def test_optional_values() -> None:
    assert settings([]).vapid_public_key is None and settings([]).redis_url is None
    assert settings([], {"GATEWAY_VAPID_PUBLIC_KEY": "BPk"}).vapid_public_key == "BPk"
    assert settings(["--redis-url", "redis://r:6379/0"]).redis_url == "redis://r:6379/0"


@pytest.mark.parametrize("name, value", [
    ("GATEWAY_PORT", "eighty"),
    ("GATEWAY_COMPRESSION", "maybe"),
    ("GATEWAY_PING_TIMEOUT", "soon"),
])
def test_invalid_environment_value_names_the_variable_and_value(name: str, value: str) -> None:
    with pytest.raises(ValueError) as info:
        settings([], {name: value})
    assert name in str(info.value) and value in str(info.value)


@pytest.mark.parametrize("changes, words", [
    ({"node_id": 1024}, "node_id"),
    ({"max_message_bytes": 10}, "max_message_bytes"),
    ({"bcrypt_cost": 3}, "bcrypt_cost"),
    ({"password_max_chars": 20}, "64"),
    ({"max_inflight": 0}, "max_inflight"),
])
def test_invalid_settings_are_refused_with_the_field_named(changes: dict[str, int], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        Settings(**changes)


def test_invalid_flag_value_exits_with_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--port", "eighty"])
    assert info.value.code == 2
    assert "--port" in capsys.readouterr().err


def test_main_reports_bad_environment_clearly(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("GATEWAY_NODE_ID", "many")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "GATEWAY_NODE_ID" in err and "Traceback" not in err


def test_secret_stays_out_of_repr_and_help() -> None:
    s = Settings(secret_key="hunter2-hunter2")
    assert "hunter2" not in repr(s)
    assert "hunter2" not in build_parser().format_help()


def flags() -> list[str]:
    return ["--" + f.name.replace("_", "-") for f in dataclasses.fields(Settings)]


def help_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.pop("PYTHONPATH", None)  # prove the installed package is found, not the checkout
    env["COLUMNS"] = "200"
    return env


@pytest.mark.parametrize("command", [
    [sys.executable, "-m", "gateway", "serve", "--help"],
    [str(VENV_BIN / "osmium-gateway"), "serve", "--help"],
], ids=["python -m gateway", "osmium-gateway"])
def test_serve_help_lists_every_settings_flag_from_any_directory(command: list[str],
                                                                  tmp_path: Path) -> None:
    run = subprocess.run(command, check=False, cwd=tmp_path, env=help_env(), capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    # A flag must appear whole: "--max-connections" inside "--max-connections-per-ip" is no proof.
    missing = [flag for flag in flags() if not re.search(re.escape(flag) + r"(?![\w-])", run.stdout)]
    assert not missing, f"--help lacks {missing}"
    for f in dataclasses.fields(Settings):
        assert "GATEWAY_" + f.name.upper() in run.stdout
