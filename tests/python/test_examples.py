"""The Python example agent runs against a real node and does what its docstring says."""

import asyncio
import subprocess
import sys

import capnp
from conftest import REPOSITORY, engram_cli

import engram


def test_the_python_agent_regrafts_after_an_epoch_advance(node):
    result = subprocess.run(
        [sys.executable, str(REPOSITORY / "examples" / "python_agent.py"), "--node", node.tcp,
         "--key", str(node.admin_key), "--world", "demo", "--advance"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for expected in ["created world demo", "advanced the epoch to 2", "staleEpoch",
                     "re-grafted under epoch 2", "ship on Tuesday", "deploys happen on Tuesdays"]:
        assert expected in result.stdout, result.stdout


def test_the_mcp_host_uses_the_bridge_within_its_restriction(node):
    async def setup():
        session = await engram.open_session(node.tcp, node.admin_key)
        await engram.create_world(session.admin, "team/auth")

    asyncio.run(capnp.run(setup()))
    result = subprocess.run(
        [sys.executable, str(REPOSITORY / "examples" / "mcp_host.py"), "--engram", engram_cli(),
         "--node", node.tcp, "--key", str(node.admin_key), "--world", "team/auth"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for expected in ["host: the bridge offers ask, check, diff, get, propose, remember, remember_batch, replay",
                     "host: remembered at commit 1",
                     "host: asked, and memory says 'the release is on Friday'",
                     "host: outside the restriction: permissionDenied"]:
        assert expected in result.stdout, result.stdout


def test_the_python_child_holds_only_what_spawn_gives_it(node):
    async def setup():
        session = await engram.open_session(node.tcp, node.admin_key)
        await engram.create_world(session.admin, "team/auth")
        session = await engram.open_session(node.tcp, node.admin_key)
        await engram.remember(
            session.writer("team/auth"),
            engram.NewAtom("tokens expire after one hour", labels=["public"]),
            engram.NewAtom("the signing key is in the vault", labels=["secret"]),
        )

    asyncio.run(capnp.run(setup()))
    result = subprocess.run(
        [engram_cli(), "--node", node.tcp, "--key", str(node.admin_key), "spawn", "--reader", "team/auth",
         "--label", "public", "--", "unshare", "--net", sys.executable,
         str(REPOSITORY / "examples" / "python_child.py")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "child: holds a reader of team/auth" in result.stdout, result.stdout
    assert "child: sees 'tokens expire after one hour'" in result.stdout, result.stdout
    assert "vault" not in result.stdout, result.stdout
