"""`engram mcp` driven by the official Python MCP SDK (`mcp`), as an MCP host would: over
stdio and over streamable HTTP. The bridge holds one world's narrowed capabilities and
nothing more; a refused call is a tool error led by engram's stable error code."""

from __future__ import annotations

import json
import signal
import subprocess

import anyio
import engram
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from conftest import Node, _engramd, engram_cli, engramd_binary, run

WORLD = "team/auth"
URI = f"engram://worlds/{WORLD}"


async def world_with_secrets(node) -> None:
    session = await engram.open_session(node.tcp, node.admin_key)
    await engram.create_world(session.admin, WORLD)
    session = await engram.open_session(node.tcp, node.admin_key)
    await engram.remember(
        session.writer(WORLD),
        engram.NewAtom("tokens expire after one hour", kind="fact", labels=["public"]),
        engram.NewAtom("the signing key is in the vault", kind="fact", labels=["secret"]),
    )


def bridge_arguments(node, *held: str) -> list[str]:
    return ["--node", node.tcp, "--key", str(node.admin_key), "mcp", *held]


PUBLIC_READER_AND_WRITER = [
    "--reader", WORLD, "--writer", WORLD, "--observer", WORLD, "--restrict", "labels=public",
]


def text_of(result) -> str:
    return "".join(block.text for block in result.content)


async def exercise(client: Client) -> None:
    """What any host does: list the tools, write, read, be refused outside the
    restriction, read the world as a resource and hear of its new atoms."""
    names = {tool.name for tool in (await client.list_tools()).tools}
    assert {"remember", "remember_batch", "propose", "ask", "get", "replay", "check", "diff"} <= names

    written = await client.call_tool(
        "remember", {"text": "sessions last one day", "kind": "fact", "labels": ["public"]}
    )
    assert not written.is_error, text_of(written)
    (receipt,) = json.loads(text_of(written))
    assert len(receipt["id"]) == 64

    asked = await client.call_tool("ask", {"text": "expire", "limit": 10})
    assert not asked.is_error, text_of(asked)
    texts = [atom["text"] for atom in json.loads(text_of(asked))]
    assert "tokens expire after one hour" in texts, texts
    replayed = json.loads(text_of(await client.call_tool("replay", {})))
    assert all("vault" not in atom["text"] for atom in replayed["atoms"]), replayed

    got = await client.call_tool("get", {"id": receipt["id"]})
    assert json.loads(text_of(got))["text"] == "sessions last one day"

    refused = await client.call_tool("remember", {"text": "the root password", "labels": ["secret"]})
    assert refused.is_error
    assert text_of(refused).startswith("permissionDenied: "), text_of(refused)

    # Crafted arguments are refused with their reason; the bridge goes on.
    for tool, arguments in [
        ("get", {"id": "not-an-id"}),
        ("ask", {"limit": "lots"}),
        ("ask", {"kinds": ["nonsense"]}),
        ("ask", {"vector": [1.0] * 5000}),
        ("remember", {"text": "x" * 100_000, "labels": ["public"]}),
        ("remember_batch", {"atoms": [{"text": "z", "labels": ["public"]}] * 10_001}),
    ]:
        malformed = await client.call_tool(tool, arguments)
        assert malformed.is_error, (tool, arguments)
        assert text_of(malformed).startswith("invalidArgument: "), text_of(malformed)

    # The world is a resource: its newest atoms, through the restriction.
    resources = (await client.list_resources()).resources
    assert [resource.uri for resource in resources] == [URI]
    read = await client.read_resource(URI)
    atoms = json.loads(read.contents[0].text)
    assert "tokens expire after one hour" in [atom["text"] for atom in atoms]
    assert all("vault" not in atom["text"] for atom in atoms)
    # A subscription to it hears of new atoms: an update once it stands (whatever
    # changed since the last read), then one for each new commit.
    async with client.listen(resource_subscriptions=[URI]) as subscription:
        events = aiter(subscription)
        with anyio.fail_after(30):
            assert (await anext(events)).uri == URI
            written = await client.call_tool("remember", {"text": "a new fact", "labels": ["public"]})
            assert not written.is_error, text_of(written)
            assert (await anext(events)).uri == URI
        read = await client.read_resource(URI)
        assert "a new fact" in [atom["text"] for atom in json.loads(read.contents[0].text)]


def test_a_host_uses_engram_over_stdio_within_the_restriction(node):
    run(world_with_secrets(node))

    async def body():
        server = StdioServerParameters(
            command=engram_cli(), args=bridge_arguments(node, *PUBLIC_READER_AND_WRITER)
        )
        async with Client(server) as client:
            await exercise(client)

    anyio.run(body)


def test_a_host_uses_engram_over_streamable_http(node):
    run(world_with_secrets(node))
    bridge = subprocess.Popen(
        [engram_cli(), *bridge_arguments(node, *PUBLIC_READER_AND_WRITER), "--http", "127.0.0.1:0"],
        stderr=subprocess.PIPE,
    )
    try:
        ready = bridge.stderr.readline().decode()
        assert ready.startswith("engram mcp ready "), ready
        url = ready.split()[-1]

        async def body():
            async with Client(url) as client:
                await exercise(client)
                # A flood of calls at once: each is answered, none crashes the bridge.
                answers = []

                async def one() -> None:
                    answers.append(await client.call_tool("ask", {"text": "expire"}))

                async with anyio.create_task_group() as flood:
                    for _ in range(200):
                        flood.start_soon(one)
                assert len(answers) == 200
                for answered in answers:
                    assert not answered.is_error or text_of(answered).split(":")[0] in engram.ERROR_CODES
                assert not (await client.call_tool("ask", {})).is_error

        anyio.run(body)
    finally:
        bridge.terminate()
        bridge.wait(timeout=30)


def test_the_bridge_refuses_a_public_http_address(node):
    refused = subprocess.run(
        [engram_cli(), *bridge_arguments(node, "--reader", WORLD), "--http", "0.0.0.0:0"],
        capture_output=True,
    )
    assert refused.returncode != 0
    assert b"loopback addresses only" in refused.stderr, refused.stderr


def test_after_an_epoch_advance_a_keyed_bridge_grafts_again_and_a_token_bridge_says_stale_epoch(node, tmp_path):
    run(world_with_secrets(node))

    async def save_token() -> bytes:
        session = await engram.open_session(node.tcp, node.admin_key)
        return await engram.save(await engram.attenuate_reader(session.reader(WORLD), labels=["public"]))

    token_file = tmp_path / "reader.token"
    token_file.write_text(engram.token_to_text(run(save_token())))
    token_file.chmod(0o600)

    async def advance() -> None:
        session = await engram.open_session(node.tcp, node.admin_key)
        await engram.advance_epoch(session.admin, bytes(32))

    async def body():
        keyed = StdioServerParameters(command=engram_cli(), args=bridge_arguments(node, "--reader", WORLD))
        tokened = StdioServerParameters(
            command=engram_cli(),
            args=["--node", node.tcp, "--token", str(token_file), "mcp"],
        )
        async with Client(keyed) as by_key, Client(tokened) as by_token:
            tools = {tool.name for tool in (await by_token.list_tools()).tools}
            assert "ask" in tools and "remember" not in tools, tools
            assert not (await by_key.call_tool("ask", {})).is_error
            assert not (await by_token.call_tool("ask", {})).is_error
            await anyio.to_thread.run_sync(lambda: run(advance()))
            assert not (await by_key.call_tool("ask", {})).is_error
            stale = await by_token.call_tool("ask", {})
            assert stale.is_error
            assert text_of(stale).startswith("staleEpoch: "), text_of(stale)

    anyio.run(body)


def test_after_the_node_restarts_the_bridge_connects_again(node):
    run(world_with_secrets(node))

    def restart() -> None:
        node.process.send_signal(signal.SIGTERM)
        assert node.process.wait(timeout=30) == 0
        node.process = subprocess.Popen(
            [str(engramd_binary()), "--data", str(node.data), "--listen", node.tcp],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert node.process.stdout.readline().startswith(b"engramd ready "), "engramd did not restart"

    async def body():
        server = StdioServerParameters(command=engram_cli(), args=bridge_arguments(node, *PUBLIC_READER_AND_WRITER))
        async with Client(server) as client:
            assert not (await client.call_tool("ask", {})).is_error
            await anyio.to_thread.run_sync(restart)
            # The call that finds the connection lost connects again and is sent again
            # (a write with its idempotency key, so it is done once).
            written = await client.call_tool("remember", {"text": "after the restart", "labels": ["public"]})
            assert not written.is_error, text_of(written)
            asked = await client.call_tool("ask", {"text": "expire"})
            assert not asked.is_error, text_of(asked)
            assert "tokens expire after one hour" in text_of(asked)
            once = await client.call_tool("ask", {"text": "after the restart"})
            assert text_of(once).count("after the restart") == 1, text_of(once)

    anyio.run(body)


def test_calls_that_find_the_epoch_moved_on_graft_again_once_between_them(tmp_path):
    # Eight logins a minute from this address: the test's own three, the bridge's
    # first, and one graft again for all the calls below, with room to spare.
    with _engramd(tmp_path, "data", "--login-attempts-per-minute", "8") as (fields, data, process):
        node = Node(tcp=fields["tcp"], unix="unix:" + fields["unix"], data=data, process=process)
        run(world_with_secrets(node))

        async def advance() -> None:
            session = await engram.open_session(node.tcp, node.admin_key)
            await engram.advance_epoch(session.admin, bytes(32))

        async def body():
            keyed = StdioServerParameters(command=engram_cli(), args=bridge_arguments(node, "--reader", WORLD))
            async with Client(keyed) as client:
                assert not (await client.call_tool("ask", {})).is_error
                await anyio.to_thread.run_sync(lambda: run(advance()))
                answers = []

                async def one() -> None:
                    answers.append(await client.call_tool("ask", {}))

                async with anyio.create_task_group() as calls:
                    for _ in range(16):
                        calls.start_soon(one)
                assert [text_of(answer) for answer in answers if answer.is_error] == []
                assert len(answers) == 16

        anyio.run(body)
