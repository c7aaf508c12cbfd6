"""Tokens and sandboxed children through the Python client: a capability saved as a
token restores on another connection without a login; a holder narrows it offline with
biscuit-python, an independent biscuit implementation; a narrowing the node does not
understand, a forged token and a revoked one are refused; and a Python parent hands a
child one capability, as `engram spawn` does."""

import subprocess
import sys

import biscuit_auth
import pytest
from conftest import REPOSITORY, run

import engram


async def world_with_secrets(node):
    session = await engram.open_session(node.tcp, node.admin_key)
    await engram.create_world(session.admin, "team/auth")
    session = await engram.open_session(node.tcp, node.admin_key)
    await engram.remember(
        session.writer("team/auth"),
        engram.NewAtom("tokens expire after one hour", kind="fact", labels=["public"]),
        engram.NewAtom("the signing key is in the vault", kind="fact", labels=["secret"]),
    )
    return session


async def restore(node, token: bytes) -> engram.Restored:
    return await (await engram.connect(node.tcp)).restore(token)


def texts(atoms):
    return sorted(atom.text for atom in atoms)


def test_a_token_narrowed_offline_with_biscuit_python_restores_narrower(node):
    async def body():
        session = await world_with_secrets(node)
        token = await engram.save(session.reader("team/auth"))
        restored = await restore(node, token)
        assert (restored.kind, restored.world) == ("reader", "team/auth")
        assert len(await engram.ask(restored.capability)) == 2

        # Anyone can check the node signed it, with the node's public key.
        _, node_key, _ = await (await engram.connect(node.tcp)).challenge()
        verified = biscuit_auth.Biscuit.from_bytes(
            token, biscuit_auth.PublicKey.from_bytes(node_key, biscuit_auth.Algorithm.Ed25519)
        )
        assert 'right("reader")' in verified.block_source(0)

        # Narrowed offline by an independent biscuit implementation.
        narrowed = verified.append(biscuit_auth.BlockBuilder('labels({"public"});')).to_bytes()
        public = await restore(node, narrowed)
        assert texts(await engram.ask(public.capability)) == ["tokens expire after one hour"]
        # The token file's text goes both ways.
        assert engram.token_from_text(engram.token_to_text(narrowed)) == narrowed

        # A check is biscuit's, not a narrowing the node enforces on every call: refused.
        checked = verified.append(
            biscuit_auth.BlockBuilder("check if time($t), $t < 2030-01-01T00:00:00Z;")
        ).to_bytes()
        with pytest.raises(engram.EngramError) as refused:
            await restore(node, checked)
        assert refused.value.code == "unauthenticated"
        assert "holds a check" in str(refused.value)

        # The same facts, signed by another key.
        forged = biscuit_auth.BiscuitBuilder(verified.block_source(0)).build(
            biscuit_auth.KeyPair().private_key
        ).to_bytes()
        with pytest.raises(engram.EngramError) as refused:
            await restore(node, forged)
        assert refused.value.code == "unauthenticated"

    run(body())


def test_a_revoked_token_and_its_capabilities_die(node):
    async def body():
        session = await world_with_secrets(node)
        token = await engram.save(session.writer("team/auth"))
        restored = await restore(node, token)
        await engram.remember(restored.capability, engram.NewAtom("through a token"))
        await session.membrane.revoke_token(token)
        with pytest.raises(engram.EngramError) as refused:
            await restore(node, token)
        assert refused.value.code == "unauthenticated"
        with pytest.raises(engram.EngramError) as refused:
            await engram.remember(restored.capability, engram.NewAtom("after revocation"))
        assert refused.value.code == "permissionDenied"

        # A signer's token, revoked by an admin.
        signer_token = await engram.save(session.signer)
        signer = await restore(node, signer_token)
        assert await engram.signer_public_key(signer.capability) == await engram.signer_public_key(session.signer)
        await engram.revoke_token(session.admin, signer_token)
        with pytest.raises(engram.EngramError) as refused:
            await restore(node, signer_token)
        assert refused.value.code == "unauthenticated"

    run(body())


def test_a_python_parent_spawns_a_child_holding_one_capability(node):
    async def body():
        session = await world_with_secrets(node)
        public = await engram.attenuate_reader(session.reader("team/auth"), labels=["public"])
        child = await engram.spawn(
            node.unix, public, "reader", "team/auth",
            ["unshare", "--net", sys.executable, str(REPOSITORY / "examples" / "python_child.py")],
            stdout=subprocess.PIPE,
        )
        assert await child.wait() == 0
        output = child.process.stdout.read().decode()
        assert "child: holds a reader of team/auth" in output, output
        assert "child: sees 'tokens expire after one hour'" in output, output
        assert "vault" not in output, output
        assert "child: saving failed: permissionDenied" in output, output

    run(body())


def test_a_python_parent_cuts_off_a_child_that_sends_garbage_and_serves_its_sibling(node, address):
    async def body():
        session = await world_with_secrets(node)
        reader = session.reader("team/auth")
        hostile = await engram.spawn(
            address, reader, "reader", "team/auth",
            ["sh", "-c", "printf 'GARBAGE!%.0s' $(seq 512) >&3; cat <&3 >/dev/null; echo cut off"],
            stdout=subprocess.PIPE,
        )
        assert await hostile.wait() == 0
        assert hostile.process.stdout.read() == b"cut off\n"
        sibling = await engram.spawn(
            address, reader, "reader", "team/auth",
            [sys.executable, str(REPOSITORY / "examples" / "python_child.py")],
            stdout=subprocess.PIPE,
        )
        assert await sibling.wait() == 0
        output = sibling.process.stdout.read().decode()
        assert "child: sees 'tokens expire after one hour'" in output, output
        assert "child: saving failed: permissionDenied" in output, output

    run(body())


def test_a_python_parent_spawning_over_tls_sends_the_token_only_to_the_pinned_node(tls_node):
    async def body():
        address = "tls://" + tls_node.tcp
        session = await engram.open_session(address, tls_node.admin_key, node_key=tls_node.node_key)
        await engram.create_world(session.admin, "team/auth")
        session = await engram.open_session(address, tls_node.admin_key, node_key=tls_node.node_key)
        await engram.remember(session.writer("team/auth"), engram.NewAtom("tokens expire after one hour"))
        reader = session.reader("team/auth")
        # Another key pinned: refused in the handshake, before the token is sent.
        with pytest.raises(engram.NodeKeyMismatch):
            await engram.spawn(address, reader, "reader", "team/auth", ["true"], node_key=bytes(32))
        child = await engram.spawn(
            address, reader, "reader", "team/auth",
            [sys.executable, str(REPOSITORY / "examples" / "python_child.py")],
            node_key=tls_node.node_key,
            stdout=subprocess.PIPE,
        )
        assert await child.wait() == 0
        assert "child: sees 'tokens expire after one hour'" in child.process.stdout.read().decode()

    run(body())


def test_a_quote_or_brace_in_a_label_is_part_of_the_label_not_a_new_fact(node):
    async def body():
        session = await world_with_secrets(node)
        admin_key = await engram.signer_public_key(session.signer)
        forged = f'x"}});principal(hex:{admin_key.hex()[:32]});right("writer");labels({{"y'
        narrowed = await engram.attenuate_reader(session.reader("team/auth"), labels=[forged, "public"])
        restored = await restore(node, await engram.save(narrowed))
        assert (restored.kind, restored.world) == ("reader", "team/auth")
        assert texts(await engram.ask(restored.capability)) == ["tokens expire after one hour"]
        # A label no atom can carry is refused at attenuation.
        with pytest.raises(engram.EngramError) as refused:
            await engram.attenuate_reader(session.reader("team/auth"), labels=["a\nb"])
        assert refused.value.code == "invalidArgument"

    run(body())


def test_a_capability_restored_or_narrowed_without_save_cannot_be_saved(node):
    async def body():
        session = await world_with_secrets(node)
        token = await engram.save(session.reader("team/auth"))
        held = await (await engram.connect(node.tcp)).restore(token, without_save=True)
        narrowed = await engram.attenuate_reader(held.capability, labels=["public"])
        online = await engram.attenuate_reader(session.reader("team/auth"), without_save=True)
        for capability in (held.capability, narrowed, online):
            with pytest.raises(engram.EngramError) as refused:
                await engram.save(capability)
            assert refused.value.code == "permissionDenied"
        # It reads as before.
        assert texts(await engram.ask(narrowed)) == ["tokens expire after one hour"]

    run(body())


def test_a_transition_atom_is_written_only_by_transition(node):
    async def body():
        session = await world_with_secrets(node)
        with pytest.raises(engram.EngramError) as refused:
            await engram.remember(
                session.writer("team/auth"),
                engram.NewAtom("retracted", kind="transition", labels=["secret"]),
            )
        assert refused.value.code == "invalidArgument"

    run(body())
