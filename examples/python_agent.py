"""An agent in Python: log in, graft, remember, ask, and survive an epoch advance by
grafting again.

    pip install ./clients/python
    cargo run --release --bin engramd &                 # a node on ./engram-data
    python examples/python_agent.py --world demo --advance

With --advance (admin keys only) the agent advances the epoch itself halfway, to show
what every agent sees when an operator does: its capabilities fail with `staleEpoch`,
and it grafts again and carries on.
"""

import argparse
import asyncio
import sys

import capnp

import engram


async def remember(membrane, session, world, atom):
    """Remembers through the session's writer; on staleEpoch grafts again and retries once."""
    try:
        (receipt,) = await engram.remember(session.writer(world), atom)
    except engram.EngramError as error:
        if error.code != "staleEpoch":
            raise
        print(f"stale capability ({error}); grafting again")
        session = await membrane.graft()
        print(f"re-grafted under epoch {session.epoch}")
        (receipt,) = await engram.remember(session.writer(world), atom)
    print(f"remembered {atom.text!r} as {receipt.id.hex()[:16]} (commit {receipt.commit})")
    return session


async def main(arguments):
    connection = await engram.connect(arguments.node)
    membrane = await connection.login(engram.load_key(arguments.key))
    session = await membrane.graft()
    print(f"logged in as {session.principal} in epoch {session.epoch}")
    world = arguments.world
    if world not in session.worlds:
        await engram.create_world(session.admin, world)
        session = await membrane.graft()
        print(f"created world {world}")
    session = await remember(membrane, session, world, engram.NewAtom("the build is green", labels=["ci"]))
    session = await remember(
        membrane, session, world, engram.NewAtom("deploys happen on Tuesdays", kind="fact", labels=["ops"], importance=0.8)
    )
    if arguments.advance:
        print(f"advanced the epoch to {await engram.advance_epoch(session.admin, bytes([0x42]) * 32)}")
    session = await remember(membrane, session, world, engram.NewAtom("ship on Tuesday", kind="decision", labels=["ops"]))
    print("known about ops:")
    for atom in await engram.ask(session.reader(world), labels=["ops"], limit=5):
        print(f"  #{atom.commit} {atom.text}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node", default="127.0.0.1:7420", help="HOST:PORT or unix:PATH")
    parser.add_argument("--key", default="./engram-data/admin.key", help="the agent's key file")
    parser.add_argument("--world", default="demo")
    parser.add_argument("--advance", action="store_true", help="advance the epoch halfway (admin only)")
    try:
        asyncio.run(capnp.run(main(parser.parse_args())))
    except engram.EngramError as error:
        print(f"python_agent: {error}", file=sys.stderr)
        sys.exit(1)
