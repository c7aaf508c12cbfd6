"""A minimal MCP host: it launches `engram mcp` over stdio, as Claude Desktop or an IDE
agent would, lists the tools the bridge offers, remembers a fact, and asks for it back.
The bridge holds one world's reader and writer, narrowed to the label `public`; the host
holds nothing but its connection to the bridge.

    pip install mcp==2.3.0
    python examples/mcp_host.py --engram target/debug/engram --world team/auth
"""

import argparse
import asyncio
import json

from mcp import Client
from mcp.client.stdio import StdioServerParameters


async def main(arguments: argparse.Namespace) -> None:
    bridge = StdioServerParameters(
        command=arguments.engram,
        args=["--node", arguments.node, "--key", arguments.key, "mcp",
              "--reader", arguments.world, "--writer", arguments.world, "--restrict", "labels=public"],
    )
    async with Client(bridge) as client:
        tools = sorted(tool.name for tool in (await client.list_tools()).tools)
        print(f"host: the bridge offers {', '.join(tools)}")
        written = await client.call_tool(
            "remember", {"text": "the release is on Friday", "kind": "decision", "labels": ["public"]}
        )
        (receipt,) = json.loads(written.content[0].text)
        print(f"host: remembered at commit {receipt['commit']}")
        asked = await client.call_tool("ask", {"text": "release", "limit": 5})
        for atom in json.loads(asked.content[0].text):
            print(f"host: asked, and memory says {atom['text']!r}")
        refused = await client.call_tool("remember", {"text": "an internal note", "labels": ["internal"]})
        print(f"host: outside the restriction: {refused.content[0].text.split(':')[0]}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engram", default="engram", help="the engram CLI")
    parser.add_argument("--node", default="127.0.0.1:7420")
    parser.add_argument("--key", default="./engram-data/admin.key")
    parser.add_argument("--world", default="team/auth")
    asyncio.run(main(parser.parse_args()))
