"""A sandboxed child in Python: its only authority is the capability `engram spawn`
serves it on its descriptor 3. It holds no key and needs no network.

    pip install ./clients/python
    engram spawn --reader team/auth --label public -- unshare --net python examples/python_child.py
"""

import asyncio
import sys

import capnp

import engram


async def main():
    held = await engram.inherited()
    print(f"child: holds a {held.kind} of {held.world}")
    if held.kind == "reader":
        for atom in await engram.ask(held.capability, limit=100):
            print(f"child: sees {atom.text!r}")
        # Its authority ends with its parent: what it holds cannot be saved as a token.
        try:
            await engram.save(held.capability)
            print("child: saved what it holds")
        except engram.EngramError as error:
            print(f"child: saving failed: {error.code}")
    elif held.kind == "writer":
        (receipt,) = await engram.remember(held.capability, engram.NewAtom("written by a Python child", labels=["public"]))
        print(f"child: remembered at commit {receipt.commit}")


if __name__ == "__main__":
    try:
        asyncio.run(capnp.run(main()))
    except engram.EngramError as error:
        print(f"python_child: {error}", file=sys.stderr)
        sys.exit(1)
