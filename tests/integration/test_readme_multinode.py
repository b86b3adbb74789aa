"""README.md, "## Running several nodes", followed literally.

The commands of the section's ```sh block are run as written, with three substitutions so the
test can run next to anything else: every port becomes a free one (in ``--port`` flags and in
URLs alike), relative paths resolve in a temporary directory (the commands run there), and
``USER_ID`` is the user the test signs up. Flags are kept as they are. ``osmium-gateway`` is the
console script of this virtualenv, as the README says.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.integration.test_multinode import (
    assert_kicked,
    close_all,
    live_nodes,
    new_email,
    revoke,
    sign_in,
    sign_up,
    wait_deleted,
)
from tests.support.redis_server import free_port, redis_executable

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
HEADING = "## Running several nodes"
BIN = Path(sys.executable).parent


def readme_commands() -> list[str]:
    text = README.read_text()
    assert HEADING in text, f"README.md has no {HEADING!r} section"
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block, f"no ```sh block under {HEADING!r}"
    lines = [_strip_comment(line) for line in block.group(1).splitlines()]
    return [line for line in lines if line]


def _strip_comment(line: str) -> str:
    """The line without a trailing ``# comment`` (a ``#`` inside quotes is kept)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].strip()
    return line.strip()


class Substitutions:
    def __init__(self, user_id: int | None = None) -> None:
        self.ports: dict[str, str] = {}
        self.user_id = user_id

    def port(self, old: str) -> str:
        return self.ports.setdefault(old, str(free_port()))

    def argv(self, line: str, env: dict[str, str]) -> list[str]:
        words = shlex.split(line, comments=True)
        if words and words[-1] == "&":
            words.pop()
        out = []
        for i, word in enumerate(words):
            word = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), word)
            if i > 0 and words[i - 1] == "--port":
                word = self.port(word)
            elif "://" in word:
                word = re.sub(r"(?<=:)(\d+)(?=/|$)", lambda m: self.port(m.group(1)), word)
            if word == "USER_ID" and self.user_id is not None:
                word = str(self.user_id)
            out.append(word)
        if out[0] == "osmium-gateway":
            out[0] = str(BIN / "osmium-gateway")
        elif out[0] == "redis-server":
            out[0] = redis_executable()
        return out


def flag(argv: list[str], name: str) -> str:
    assert name in argv, f"{name} missing from {argv}"
    return argv[argv.index(name) + 1]


def wait_healthy(port: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"node on port {port} exited:\n{log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"node on port {port} not healthy:\n{log.read_text(errors='replace')}")


async def run(argv: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Run a foreground command to completion; what it printed."""
    done = await asyncio.to_thread(subprocess.run, argv, cwd=cwd, env=env, check=True,
                                   timeout=20, capture_output=True, text=True)
    return done.stdout


def launch(commands: list[list[str]], logs: list[Path | None], cwd: Path, env: dict[str, str],
           procs: list[subprocess.Popen[bytes]]) -> None:
    """Start the README's background commands (``&``); each joins ``procs`` for cleanup."""
    for argv, log in zip(commands, logs, strict=True):
        if log is None:
            procs.append(subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
            continue
        with open(log, "wb") as out:
            procs.append(subprocess.Popen(argv, cwd=cwd, env=env, stdout=out,
                                          stderr=subprocess.STDOUT))


async def test_readme_several_nodes_commands_work(tmp_path: Path) -> None:
    commands = readme_commands()
    background = [c for c in commands if c.endswith("&")]
    later = [c for c in commands if not c.endswith("&") and "USER_ID" in c]
    setup = [c for c in commands if c not in background and c not in later]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    # The console script finds this checkout even when run from another directory.
    env["PYTHONPATH"] = str(ROOT)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    subs = Substitutions()
    procs: list[subprocess.Popen[bytes]] = []
    signed = []
    try:
        for line in setup:
            exported = re.fullmatch(r"export (\w+)=(.*)", line)
            if exported:
                name = exported.group(1)
                env[name] = await run(["bash", "-c", f'{line}\nprintf %s "${name}"'],
                                      tmp_path, env)
            else:
                await run(subs.argv(line, env), tmp_path, env)

        servers = [subs.argv(c, env) for c in background]
        redis = [a for a in servers if Path(a[0]).name.startswith("redis-server")]
        nodes = [a for a in servers if a[1:2] == ["serve"]]
        assert len(redis) == 1 and len(nodes) >= 2, background
        # What makes a set of nodes: distinct ids and names, one db, one Redis, one secret.
        assert len({flag(a, "--node-id") for a in nodes}) == len(nodes), nodes
        assert len({flag(a, "--node-name") for a in nodes}) == len(nodes), nodes
        assert len({flag(a, "--db") for a in nodes}) == 1, nodes
        assert len({flag(a, "--redis-url") for a in nodes}) == 1, nodes
        secrets = {flag(a, "--secret-key") for a in nodes}
        assert len(secrets) == 1 and "" not in secrets, "the nodes must share a non-empty secret"

        logs = [tmp_path / f"node-{flag(argv, '--node-name')}.log" for argv in nodes]
        await asyncio.to_thread(launch, [redis[0], *nodes], [None, *logs], tmp_path, env, procs)
        for argv, proc, log in zip(nodes, procs[1:], logs, strict=True):
            await asyncio.to_thread(wait_healthy, flag(argv, "--port"), proc, log)

        url_a = f"ws://127.0.0.1:{flag(nodes[0], '--port')}"
        url_b = f"ws://127.0.0.1:{flag(nodes[1], '--port')}"
        name_a, name_b = flag(nodes[0], "--node-name"), flag(nodes[1], "--node-name")
        email = new_email()
        on_a = await sign_up(url_a, email)
        on_b = await sign_in(url_b, email)
        signed = [on_a, on_b]

        subs.user_id = on_a.user_id
        for line in later:
            argv = subs.argv(line, env)
            listing = await run(argv, tmp_path, env)
            if argv[1:3] == ["sessions", "list"]:
                assert live_nodes(listing, on_a.session_id) == [name_a], listing
                assert live_nodes(listing, on_b.session_id) == [name_b], listing

        # The nodes work as one: a revocation through one kicks the socket on the other, long
        # before the default 30 s re-check could.
        await revoke(on_a.client, on_b.session_id)
        await assert_kicked(on_b.client, on_b.session_id)
        await wait_deleted(on_a.client, on_b.session_id)
    finally:
        await close_all(*signed)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
