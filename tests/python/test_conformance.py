"""Conformance: every capability of engram driven from Python through pycapnp (the C++
Cap'n Proto implementation) against a real engramd, over TCP and the Unix socket."""

from __future__ import annotations

import asyncio
import math
import signal
import socket

import pytest
from conftest import run
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

import engram
from engram import EngramError, NewAtom


async def admin_session(address, node):
    return await engram.open_session(address, node.admin_key)


async def with_world(address, node, world="team/auth"):
    """Creates `world` and grafts again so the session holds it."""
    session = await admin_session(address, node)
    await engram.create_world(session.admin, world)
    return await admin_session(address, node)


async def expect_code(code, awaitable):
    with pytest.raises(EngramError) as caught:
        await awaitable
    assert caught.value.code == code, str(caught.value)
    return caught.value


# Login


def test_login_with_the_admin_key_and_graft(address, node):
    async def body():
        session = await admin_session(address, node)
        assert session.principal == "admin"
        assert session.admin_principal
        assert session.epoch == 1
        assert session.admin is not None

    run(body())


def test_a_wrong_key_and_a_replayed_nonce_are_unauthenticated(node):
    async def body():
        connection = await engram.connect(node.tcp)
        stranger = Ed25519PrivateKey.generate()
        unknown = await expect_code("unauthenticated", connection.login(stranger))

        admin = engram.load_key(node.admin_key)
        nonce, node_key, epoch = await connection.challenge()
        signature = admin.sign(engram.login_message(nonce, node_key, epoch))

        async def login():
            request = connection.terminal.login_request()
            request.publicKey = engram.public_key_bytes(admin)
            request.nonce = nonce
            request.signature = signature
            return await engram.call(request.send())

        await login()
        replayed = await expect_code("unauthenticated", login())

        # Another key's signature over a fresh nonce.
        nonce, node_key, epoch = await connection.challenge()
        request = connection.terminal.login_request()
        request.publicKey = engram.public_key_bytes(admin)
        request.nonce = nonce
        request.signature = stranger.sign(engram.login_message(nonce, node_key, epoch))
        wrong = await expect_code("unauthenticated", engram.call(request.send()))
        # One message for every cause: it never tells whether a key is registered.
        assert str(unknown) == str(replayed) == str(wrong)

    run(body())


def test_pipelined_calls_use_capabilities_before_they_resolve(node):
    async def body():
        connection = await engram.connect(node.tcp)
        admin = engram.load_key(node.admin_key)
        nonce, node_key, epoch = await connection.challenge()
        request = connection.terminal.login_request()
        request.publicKey = engram.public_key_bytes(admin)
        request.nonce = nonce
        request.signature = admin.sign(engram.login_message(nonce, node_key, epoch))
        # graft() is sent on the membrane the login has not returned yet: one round trip.
        membrane = request.send().membrane
        grafted = await engram.call(membrane.graft())
        assert grafted.principal.name == "admin"

        # Pipelined again: create a world, then, on a reader from an attenuate whose answer
        # has not arrived, replay.
        await engram.create_world(grafted.admin, "pipes")
        session = await engram.Membrane(membrane).graft()
        await engram.remember(session.writer("pipes"), NewAtom("through the pipe", labels=["p"]))
        attenuate = session.reader("pipes").attenuate_request()
        attenuate.restriction.labels = ["p"]
        narrowed = attenuate.send().reader
        replay = narrowed.replay_request()
        replay.limit = 10
        result = await engram.call(replay.send())
        assert [atom.content.text for atom in result.atoms] == ["through the pipe"]

    run(body())


# Memory


def test_remember_get_replay_ask_heads_verify(address, node):
    async def body():
        session = await with_world(address, node)
        writer = session.writer("team/auth")
        reader = session.reader("team/auth")
        receipts = await engram.remember(
            writer,
            NewAtom("tokens expire after one hour", kind="fact", labels=["auth"], importance=0.8),
            NewAtom("hash with argon2", kind="decision", labels=["auth", "crypto"]),
            NewAtom("login latency is 40 ms", kind="observation", payload=b'{"ms": 40}'),
        )
        assert [receipt.seq for receipt in receipts] == [1, 2, 3]
        assert [receipt.commit for receipt in receipts] == [1, 2, 3]
        assert receipts[0].prev == bytes(32)
        assert receipts[1].prev == receipts[0].id
        (single,) = await engram.remember(writer, NewAtom("one more", kind="plan"))
        assert (single.seq, single.prev) == (4, receipts[2].id)

        atom = await engram.get(reader, receipts[1].id)
        assert (atom.text, atom.kind, atom.labels) == ("hash with argon2", "decision", ("auth", "crypto"))
        assert atom.writer == engram.public_key_bytes(engram.load_key(node.admin_key))
        assert (await engram.get(reader, receipts[2].id)).payload == b'{"ms": 40}'

        atoms, cursor = await engram.replay(reader, 0, 100)
        assert [atom.commit for atom in atoms] == [1, 2, 3, 4]
        assert cursor == 4
        atoms, _ = await engram.replay(reader, 2, 100)
        assert [atom.text for atom in atoms] == ["login latency is 40 ms", "one more"]

        texts = lambda atoms: [atom.text for atom in atoms]
        assert texts(await engram.ask(reader, kinds=["decision"])) == ["hash with argon2"]
        assert texts(await engram.ask(reader, labels=["auth"])) == ["hash with argon2", "tokens expire after one hour"]
        assert texts(await engram.ask(reader, labels=["auth", "crypto"])) == ["hash with argon2"]
        assert texts(await engram.ask(reader, min_importance=0.7)) == ["tokens expire after one hour"]
        assert texts(await engram.ask(reader, kinds=["fact", "plan"], limit=1)) == ["one more"]
        assert texts(await engram.ask(reader, before_commit=2)) == ["tokens expire after one hour"]
        assert len(await engram.ask(reader, writers=[atom.writer])) == 4

        heads = await engram.heads(reader)
        assert heads == [(atom.writer, 4, single.id)]
        assert await engram.verify(reader) == {"chains": 1, "entries": 4, "bad": None}

    run(body())


# Signer


def test_signatures_verify_against_the_public_key(node):
    async def body():
        session = await admin_session(node.tcp, node)
        public = Ed25519PublicKey.from_public_bytes(await engram.signer_public_key(session.signer))
        signature = await engram.sign(session.signer, "release", b"v1.2.3")
        public.verify(signature, engram.signed_message("release", b"v1.2.3"))
        with pytest.raises(InvalidSignature):
            public.verify(signature, engram.signed_message("other", b"v1.2.3"))
        request = session.signer.attenuate_request()
        request.domains = ["release"]
        narrowed = (await engram.call(request.send())).signer
        await engram.sign(narrowed, "release", b"ok")
        await expect_code("permissionDenied", engram.sign(narrowed, "payments", b"no"))

    run(body())


# Attenuation


def test_attenuation_narrows_and_never_widens(node):
    async def body():
        session = await with_world(node.tcp, node, "ops")
        writer = session.writer("ops")
        narrowed = await engram.attenuate_writer(writer, kinds=["fact"], labels=["ops"], max_importance=0.6)
        await engram.remember(narrowed, NewAtom("disk 80% full", kind="fact", labels=["ops"]))
        for denied in [
            NewAtom("a plan", kind="plan", labels=["ops"]),
            NewAtom("secret", kind="fact", labels=["secret"]),
            NewAtom("unlabelled", kind="fact"),
            NewAtom("too important", kind="fact", labels=["ops"], importance=0.9),
        ]:
            await expect_code("permissionDenied", engram.remember(narrowed, denied))
        wider = await engram.attenuate_writer(narrowed, kinds=["fact", "plan"], labels=["ops", "secret"], max_importance=1.0)
        await expect_code("permissionDenied", engram.remember(wider, NewAtom("a plan", kind="plan", labels=["ops"])))
        await expect_code("permissionDenied", engram.remember(wider, NewAtom("s", kind="fact", labels=["secret"])))
        await engram.remember(wider, NewAtom("still fine", kind="fact", labels=["ops"]))

        await engram.remember(writer, NewAtom("hidden", kind="fact", labels=["private"]))
        reader = await engram.attenuate_reader(session.reader("ops"), labels=["ops"])
        atoms, _ = await engram.replay(reader, 0, 100)
        assert [atom.text for atom in atoms] == ["disk 80% full", "still fine"]
        full, _ = await engram.replay(session.reader("ops"), 0, 100)
        hidden = next(atom for atom in full if atom.text == "hidden")
        await expect_code("notFound", engram.get(reader, hidden.id))

    run(body())


# Epochs


def test_advancing_the_epoch_makes_every_old_capability_stale(address, node):
    async def body():
        session = await with_world(address, node, "shared")
        agent_key = Ed25519PrivateKey.generate()
        await engram.add_principal(session.admin, "agent", engram.public_key_bytes(agent_key), {"shared": "rwo"})
        agent_connection = await engram.connect(address)
        agent = await (await agent_connection.login(agent_key)).graft()
        reader, writer = agent.reader("shared"), agent.writer("shared")
        narrowed = await engram.attenuate_writer(writer, labels=["x"])
        (receipt,) = await engram.remember(writer, NewAtom("before"))

        assert await engram.advance_epoch(session.admin, b"\xab" * 32) == 2

        await expect_code("staleEpoch", engram.remember(writer, NewAtom("after")))
        await expect_code("staleEpoch", engram.remember(narrowed, NewAtom("after", labels=["x"])))
        await expect_code("staleEpoch", engram.get(reader, receipt.id))
        await expect_code("staleEpoch", engram.replay(reader))
        await expect_code("staleEpoch", engram.verify(reader))
        await expect_code("staleEpoch", engram.sign(agent.signer, "d", b"m"))
        await expect_code("staleEpoch", engram.create_world(session.admin, "late"))

        agent = await (await agent_connection.login(agent_key)).graft()
        assert agent.epoch == 2
        await engram.remember(agent.writer("shared"), NewAtom("after the re-graft"))
        atoms, _ = await engram.replay(agent.reader("shared"))
        assert [atom.text for atom in atoms] == ["before", "after the re-graft"]

    run(body())


# Bad input


BAD_ATOMS = [
    ("importance above 1", NewAtom("x", importance=1.5)),
    ("importance NaN", NewAtom("x", importance=math.nan)),
    ("confidence below 0", NewAtom("x", confidence=-0.5)),
    ("empty text", NewAtom("")),
    ("oversized text", NewAtom("x" * (64 * 1024 + 1))),
    ("repeated label", NewAtom("x", labels=["a", "a"])),
]


def test_each_bad_input_gets_its_code_and_changes_nothing(node):
    async def body():
        session = await with_world(node.tcp, node, "w")
        writer, reader = session.writer("w"), session.reader("w")
        (kept,) = await engram.remember(writer, NewAtom("kept"))
        for case, atom in BAD_ATOMS:
            error = await expect_code("invalidArgument", engram.remember(writer, atom))
            assert error.message, case
        await expect_code("invalidArgument", engram.remember(writer, NewAtom("good"), NewAtom("bad", importance=9)))
        await expect_code("invalidArgument", engram.get(reader, b"\x01\x02\x03"))
        await expect_code("notFound", engram.get(reader, b"\x09" * 32))
        await expect_code("invalidArgument", engram.ask(reader, limit=0))
        await expect_code("invalidArgument", engram.replay(reader, 0, 0))
        await expect_code("invalidArgument", engram.create_world(session.admin, "Not A Name"))
        await expect_code("conflict", engram.create_world(session.admin, "w"))
        await expect_code("notFound", engram.add_principal(session.admin, "ghost", engram.public_key_bytes(Ed25519PrivateKey.generate()), {"nowhere": "r"}))
        await expect_code("invalidArgument", engram.advance_epoch(session.admin, b"\x01\x02"))
        atoms, _ = await engram.replay(reader)
        assert [atom.id for atom in atoms] == [kept.id]
        assert (await engram.verify(reader))["bad"] is None

    run(body())


def test_a_retry_with_its_idempotency_key_is_answered_and_written_once(address, node):
    async def body():
        session = await with_world(address, node, "w")
        writer, reader = session.writer("w"), session.reader("w")
        key = engram.new_idempotency_key()
        atoms = (NewAtom("deploys run at noon"), NewAtom("and never on Fridays"))
        first = await engram.remember_keyed(writer, *atoms, key=key)
        assert not first.replayed
        # The answer was lost: the retry's first attempt cannot even connect (nothing
        # listens there), the next reaches the node with the same key.
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        nowhere = "127.0.0.1:%d" % closed.getsockname()[1]
        attempts = []
        sessions = []  # a writer lives as long as its connection

        async def acquire():
            attempts.append(1)
            address_now = nowhere if len(attempts) == 1 else address
            sessions.append(await engram.open_session(address_now, node.admin_key))
            return sessions[-1].writer("w")

        told = []
        retried = await engram.remember_retrying(
            acquire, *atoms, key=key, on_retry=lambda attempt, error: told.append((attempt, error))
        )
        closed.close()
        assert len(attempts) == 2
        # The failed attempt was told, with why it failed.
        assert [attempt for attempt, _ in told] == [1] and engram.is_retryable(told[0][1])
        assert retried.replayed and retried.receipts == first.receipts
        await expect_code("conflict", engram.remember_keyed(writer, NewAtom("other atoms"), key=key))
        request = writer.remember_request()
        NewAtom("x").fill(request.init("atom"))
        request.idempotencyKey = b"k" * 65
        await expect_code("invalidArgument", engram.call(request.send()))
        # A refusal is not retried: it was an answer.
        refused = await expect_code(
            "conflict", engram.remember_retrying(lambda: _ready(writer), NewAtom("other atoms"), key=key)
        )
        assert refused.idempotency_key == key
        assert len(await engram.ask(reader, limit=100)) == 2
        # A failure carries the key the helper made, so the write can be retried with it.
        failed = await expect_code(
            "invalidArgument", engram.remember_retrying(lambda: _ready(writer), NewAtom(""))
        )
        assert len(failed.idempotency_key) == 32
        assert bytes.fromhex(failed.idempotency_key.decode())

    run(body())


async def _ready(value):
    return value


def test_tls_pins_the_node_key_or_records_it_on_first_use(tls_node, node, tmp_path):
    async def body():
        address = "tls://" + tls_node.tcp
        session = await engram.open_session(address, tls_node.admin_key, node_key=tls_node.node_key)
        await engram.create_world(session.admin, "w")
        session = await engram.open_session(address, tls_node.admin_key, node_key=tls_node.node_key)
        (receipt,) = await engram.remember(session.writer("w"), NewAtom("over TLS"))
        assert receipt.seq == 1
        # Another key pinned: refused in the handshake, both keys named.
        other = bytes(32)
        with pytest.raises(engram.NodeKeyMismatch) as refused:
            await engram.connect(address, node_key=other)
        assert tls_node.node_key.hex() in str(refused.value) and other.hex() in str(refused.value)
        assert not engram.is_retryable(refused.value)  # retrying cannot change who answers
        # Trust on first use: recorded, then required.
        known = tmp_path / "config" / "known_nodes"
        await engram.open_session(address, tls_node.admin_key, known_nodes=known)
        assert known.read_text().split() == [tls_node.tcp, tls_node.node_key.hex()]
        await engram.open_session(address, tls_node.admin_key, known_nodes=known)
        known.write_text(f"{tls_node.tcp} {other.hex()}\n")
        with pytest.raises(engram.NodeKeyMismatch) as refused:
            await engram.connect(address, known_nodes=known)
        assert f"{known}:1" in str(refused.value)
        # A plain client reaches a plain node as before.
        plain = await admin_session(node.tcp, node)
        assert plain.admin is not None

    run(body())


# Observe


def test_subscriptions_deliver_in_order_resume_and_end_on_epoch_advance(address, node):
    async def body():
        session = await with_world(address, node, "feed")
        writer = session.writer("feed")
        watch = await engram.subscribe(session.worlds["feed"].observer, kinds=["fact"])
        await engram.remember(writer, NewAtom("one", kind="fact"), NewAtom("skipped", kind="plan"))
        await engram.remember(writer, NewAtom("two", kind="fact"))
        seen = []
        while len(seen) < 2:
            seen.extend(await watch.next())
        assert [(atom.commit, atom.text) for atom in seen] == [(1, "one"), (3, "two")]

        # Resume from a cursor on a fresh subscription: only what came after it.
        resumed = await engram.subscribe(session.worlds["feed"].observer, from_commit=1)
        batch = await resumed.next()
        assert [atom.text for atom in batch] == ["skipped", "two"]
        await resumed.cancel()

        await engram.advance_epoch(session.admin, bytes(32))
        with pytest.raises(EngramError) as ended:
            await watch.next()
        assert ended.value.code == "staleEpoch"

    run(body())


# Similarity


def test_similarity_search_through_python(node):
    async def body():
        session = await with_world(node.tcp, node, "vectors")
        writer, reader = session.writer("vectors"), session.reader("vectors")
        await engram.remember(
            writer,
            NewAtom("north", kind="fact", vector=[0.0, 1.0, 0.0]),
            NewAtom("east", kind="fact", vector=[1.0, 0.0, 0.0], labels=["x"]),
            NewAtom("north-east", kind="fact", vector=[0.7, 0.7, 0.0], labels=["x"]),
        )
        found = await engram.ask(reader, vector=[0.1, 1.0, 0.0], limit=1)
        assert [atom.text for atom in found] == ["north"]
        found = await engram.ask(reader, vector=[0.1, 1.0, 0.0], labels=["x"], limit=1)
        assert [atom.text for atom in found] == ["north-east"]
        await expect_code("invalidArgument", engram.ask(reader, vector=[1.0, 0.0]))
        await expect_code("invalidArgument", engram.remember(writer, NewAtom("flat", vector=[1.0, 2.0])))

    run(body())


def test_text_search_through_python(node):
    async def body():
        session = await with_world(node.tcp, node, "notes")
        writer, reader = session.writer("notes"), session.reader("notes")
        await engram.remember(
            writer,
            NewAtom("Hash passwords with argon2id", kind="decision", labels=["auth"]),
            NewAtom("Deploys happen on Tuesdays", kind="fact", labels=["ops"]),
            NewAtom("Never store passwords in logs", kind="constraint", labels=["ops"]),
        )
        found = await engram.ask(reader, text="passwords", labels=["ops"])
        assert [atom.text for atom in found] == ["Never store passwords in logs"]
        found = await engram.ask(reader, text="tuesdays")
        assert [atom.text for atom in found] == ["Deploys happen on Tuesdays"]
        await expect_code("invalidArgument", engram.ask(reader, text="?!"))

    run(body())


# Bounded harm: the cost model


def test_answers_stop_at_the_budget_and_continue_by_cursor(node):
    async def body():
        session = await with_world(node.tcp, node, "large")
        writer, reader = session.writer("large"), session.reader("large")
        await engram.remember(writer, *[NewAtom(f"large {index}", payload=bytes(1024 * 1024)) for index in range(9)])
        texts, before, pages = [], 0, 0
        while True:
            page = await engram.ask_page(reader, limit=100, before_commit=before)
            pages += 1
            assert len(page.atoms) < 9
            texts += [atom.text for atom in page.atoms]
            if page.resume_before_commit is None:
                assert page.warning == ""
                break
            assert "beforeCommit" in page.warning
            before = page.resume_before_commit
        assert texts == [f"large {index}" for index in reversed(range(9))]
        assert pages == 2

    run(body())


def test_text_queries_are_words_never_query_syntax(node):
    async def body():
        session = await with_world(node.tcp, node, "words")
        writer, reader = session.writer("words"), session.reader("words")
        await engram.remember(writer, NewAtom("alphabet soup"), NewAtom("alpha centauri"))
        assert [atom.text for atom in await engram.ask(reader, text="alpha*")] == ["alpha centauri"]
        await expect_code("invalidArgument", engram.ask(reader, text="*"))

    run(body())


def test_a_world_created_with_a_vector_dimension_refuses_others(node):
    async def body():
        session = await admin_session(node.tcp, node)
        world = await engram.create_world(session.admin, "fixed", vector_dimension=3)
        assert world.vectorDimension == 3
        session = await admin_session(node.tcp, node)
        writer = session.writer("fixed")
        await expect_code("invalidArgument", engram.remember(writer, NewAtom("flat", vector=[1.0, 0.0])))
        await engram.remember(writer, NewAtom("right", vector=[1.0, 0.0, 0.0]))

    run(body())


def test_rates_of_grants_and_attenuations(node):
    async def body():
        session = await with_world(node.tcp, node, "rated")
        reader = await engram.attenuate_reader(session.reader("rated"), calls_per_second=1)
        await engram.replay(reader)
        await expect_code("resourceExhausted", engram.replay(reader))
        key = Ed25519PrivateKey.generate()
        principal = await engram.add_principal(
            session.admin, "rated-agent", engram.public_key_bytes(key), {"rated": "rw@0/3"}
        )
        assert (principal.grants[0].rate.callsPerSecond, principal.grants[0].rate.atomsPerSecond) == (0, 3)

    run(body())


def test_generation_tells_whether_anything_is_new(node):
    async def body():
        session = await with_world(node.tcp, node, "polled")
        reader, writer = session.reader("polled"), session.writer("polled")
        empty = await engram.generation(reader)
        assert (empty.last_commit, empty.atoms) == (0, 0)
        (receipt,) = await engram.remember(writer, NewAtom("first", labels=["public"]))
        first = await engram.generation(reader)
        assert (first.last_commit, first.atoms) == (receipt.commit, 1)
        assert first.node_commit >= receipt.commit
        assert await engram.generation(reader) == first
        # Through a restriction that hides atoms: nothing of hidden writes.
        restricted = await engram.attenuate_reader(reader, labels=["public"])
        seen = await engram.generation(restricted)
        assert seen.atoms is None and seen.last_commit == seen.node_commit

    run(body())


def test_ask_filters_by_valid_time(node):
    async def body():
        session = await with_world(node.tcp, node, "limits")
        writer, reader = session.writer("limits"), session.reader("limits")
        march, april, may = 1772496000000, 1775174400000, 1777766400000
        await engram.remember(writer, NewAtom("rate limit 100/s", labels=["rate"], valid_from=march, valid_until=april))
        await engram.remember(writer, NewAtom("rate limit 500/s", labels=["rate"], valid_from=april))
        await engram.remember(writer, NewAtom("rate limits matter", labels=["rate"]))
        assert [atom.text for atom in await engram.ask(reader, labels=["rate"], valid_at=march + 1)] == [
            "rate limit 100/s"
        ]
        (later,) = await engram.ask(reader, labels=["rate"], valid_at=may)
        assert (later.text, later.valid_time) == ("rate limit 500/s", (april, 0))
        assert len(await engram.ask(reader, labels=["rate"])) == 3

    run(body())


def test_time_travel_answers_as_the_world_stood_at_a_commit(node):
    async def body():
        session = await with_world(node.tcp, node, "history")
        writer, reader = session.writer("history"), session.reader("history")
        (first,) = await engram.remember(writer, NewAtom("JWT algorithm: RS256", labels=["jwt"]))
        (second,) = await engram.remember(writer, NewAtom("JWT algorithm: ES256", labels=["jwt"]))
        then = [atom.text for atom in await engram.ask(reader, labels=["jwt"], as_of=first.commit)]
        assert then == ["JWT algorithm: RS256"]
        assert len(await engram.ask(reader, labels=["jwt"])) == 2
        assert (await engram.get(reader, second.id)).text == "JWT algorithm: ES256"
        await expect_code("notFound", engram.get(reader, second.id, as_of=first.commit))
        (head,) = await engram.heads(reader, as_of=first.commit)
        assert (head[1], head[2]) == (first.seq, first.id)
        (third,) = await engram.remember(writer, NewAtom("JWT keys rotate monthly", labels=["jwt"]))
        changed, cursor = await engram.diff(reader, first.commit, second.commit)
        assert ([atom.text for atom in changed], cursor) == (["JWT algorithm: ES256"], second.commit)
        changed, _ = await engram.diff(reader, first.commit)
        assert [atom.commit for atom in changed] == [second.commit, third.commit]
        # A time names the last commit recorded at or before it.
        assert await engram.commit_at(reader, 2**62) == third.commit
        assert await engram.commit_at(reader, 0) == 0
        # Through a restriction that hides atoms, it would find hidden atoms' commits.
        narrowed = await engram.attenuate_reader(reader, labels=["jwt"])
        await expect_code("permissionDenied", engram.commit_at(narrowed, 2**62))

    run(body())


# Lifecycles


def test_proposals_are_not_decisions_until_approved(node):
    async def body():
        session = await with_world(node.tcp, node, "team/auth")
        lead_key, researcher_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
        lead_principal = await engram.add_principal(
            session.admin, "lead", engram.public_key_bytes(lead_key), {"team/auth": "rwoa"}
        )
        assert lead_principal.grants[0].approve
        await engram.add_principal(
            session.admin, "researcher", engram.public_key_bytes(researcher_key), {"team/auth": "rwo"}
        )

        async def login(key):
            connection = await engram.connect(node.tcp)
            session = await (await connection.login(key)).graft()
            session.connection = connection  # the session lives as long as its connection
            return session

        lead, researcher = await login(lead_key), await login(researcher_key)
        (decided,) = await engram.remember(
            lead.writer("team/auth"), NewAtom("JWT algorithm: RS256", kind="decision", labels=["jwt"])
        )
        approval = await engram.transition(lead.writer("team/auth"), decided.id, "approve", "benchmarks agree")
        (proposed,) = await engram.remember(
            researcher.writer("team/auth"),
            NewAtom("JWT algorithm: ES256", kind="decision", labels=["jwt"], proposed=True),
        )
        reader = researcher.reader("team/auth")
        current = await engram.ask(reader, labels=["jwt"])
        assert [(atom.text, atom.state) for atom in current] == [("JWT algorithm: RS256", "approved")]
        both = await engram.ask(reader, labels=["jwt"], states=["asserted", "proposed", "approved"])
        # Asked by state, the approval is there too: it carries its target's labels.
        assert [(atom.text, atom.state) for atom in both] == [
            ("JWT algorithm: ES256", "proposed"),
            ("benchmarks agree", "asserted"),
            ("JWT algorithm: RS256", "approved"),
        ]
        # The approve right: the researcher has none; a lead attenuated without it neither.
        await expect_code("permissionDenied", engram.transition(researcher.writer("team/auth"), proposed.id, "approve"))
        proposer = await engram.attenuate_writer(lead.writer("team/auth"), without_approve=True)
        await expect_code("permissionDenied", engram.transition(proposer, proposed.id, "approve"))
        await engram.transition(lead.writer("team/auth"), proposed.id, "reject")
        # Illegal transitions are conflicts and change nothing.
        await expect_code("conflict", engram.transition(lead.writer("team/auth"), proposed.id, "approve"))
        assert (await engram.get(reader, proposed.id)).state == "rejected"
        # An atom of a world the researcher holds no grant for is not found, as one that
        # does not exist: whether an id exists elsewhere is not its to learn.
        await engram.create_world(session.admin, "team/secret")
        admin = await engram.open_session(node.tcp, node.admin_key)
        (hidden,) = await engram.remember(admin.writer("team/secret"), NewAtom("a secret plan"))
        for target in (hidden.id, bytes(32)):
            await expect_code("notFound", engram.transition(researcher.writer("team/auth"), target, "retract"))
            await expect_code(
                "notFound",
                engram.remember(researcher.writer("team/auth"), NewAtom("replaces it", supersedes=[target])),
            )
        # As of the approval's commit, the state then; the transition atom links its target.
        assert (await engram.get(reader, proposed.id, as_of=proposed.commit)).state == "proposed"
        (transition_atom,) = [
            atom for atom in (await engram.replay(reader))[0] if atom.commit == approval.commit
        ]
        assert (transition_atom.kind, transition_atom.text) == ("transition", "benchmarks agree")
        assert transition_atom.links == (("approves", decided.id),)

    run(body())


def test_supersede_and_retract(node):
    async def body():
        session = await with_world(node.tcp, node, "keys")
        writer, reader = session.writer("keys"), session.reader("keys")
        (old,) = await engram.remember(writer, NewAtom("rotate keys yearly", labels=["keys"]))
        (new,) = await engram.remember(writer, NewAtom("rotate keys monthly", labels=["keys"], supersedes=[old.id]))
        assert [atom.text for atom in await engram.ask(reader, labels=["keys"])] == ["rotate keys monthly"]
        assert (await engram.get(reader, old.id)).state == "superseded"
        await engram.transition(writer, new.id, "retract")
        assert await engram.ask(reader, labels=["keys"]) == []
        retracted = await engram.ask(reader, labels=["keys"], states=["retracted", "superseded"])
        assert [(atom.text, atom.state) for atom in retracted] == [
            ("rotate keys monthly", "retracted"),
            ("rotate keys yearly", "superseded"),
        ]
        await expect_code("conflict", engram.transition(writer, new.id, "retract"))
        await expect_code("notFound", engram.transition(writer, bytes(32), "approve"))

    run(body())


# Trust and contradictions


def test_corrections_lower_trust_and_contradictions_show_on_both_sides(node):
    async def body():
        session = await with_world(node.tcp, node, "ops")
        key = Ed25519PrivateKey.generate()
        await engram.add_principal(session.admin, "reviewer", engram.public_key_bytes(key), {"ops": "rwo"})
        connection = await engram.connect(node.tcp)
        reviewer = await (await connection.login(key)).graft()
        writer, reader = session.writer("ops"), session.reader("ops")
        (claim,) = await engram.remember(writer, NewAtom("the pool size is 10", labels=["db"]))
        (correction,) = await engram.remember(
            reviewer.writer("ops"),
            NewAtom("it is 20", labels=["db"], links=[("corrects", claim.id), ("contradicts", claim.id)]),
        )
        admin_key = engram.public_key_bytes(engram.load_key(node.admin_key))
        trust = await engram.trust(reader, admin_key, "db")
        assert (trust.confirms, trust.corrects) == (0, 1) and abs(trust.score - 1 / 3) < 1e-9
        assert (await engram.trust(reader, admin_key)).corrects == 1
        page = await engram.ask_page(reader, labels=["db"])
        assert [atom.id for atom in page.atoms] == [correction.id, claim.id]
        assert page.contradictions == [(claim.id,), (correction.id,)]
        restricted = await engram.attenuate_reader(reader, labels=["db"])
        await expect_code("permissionDenied", engram.trust(restricted, admin_key, "db"))

    run(body())


# Constraints


def test_a_plan_is_checked_against_live_constraints(node):
    async def body():
        session = await with_world(node.tcp, node, "team/web")
        writer, reader = session.writer("team/web"), session.reader("team/web")
        (rule,) = await engram.remember(
            writer,
            NewAtom(
                "do not use library requests for HTTP; use httpx",
                kind="constraint",
                labels=["http"],
                forbids=["requests"],
            ),
        )
        (found,) = await engram.check(reader, "fetch it with requests.get", ["http"])
        assert found.matched == ("requests",)
        assert (found.constraint.id, found.constraint.forbids) == (rule.id, ("requests",))
        assert found.constraint.writer == engram.public_key_bytes(engram.load_key(node.admin_key))
        assert await engram.check(reader, "fetch it with httpx", ["http"]) == []
        assert await engram.check(reader, "fetch it with requests", ["frontend"]) == []
        violations, warning = await engram.check_page(reader, "requests", [])
        assert len(violations) == 1 and warning == ""
        await engram.transition(writer, rule.id, "retract")
        assert await engram.check(reader, "fetch it with requests", ["http"]) == []
        await expect_code("invalidArgument", engram.remember(writer, NewAtom("x", kind="fact", forbids=["requests"])))

    run(body())


# Audit trail


def test_the_audit_trail_records_what_each_read_answered(node):
    import asyncio
    import json

    async def body():
        session = await with_world(node.tcp, node, "audited")
        writer, reader = session.writer("audited"), session.reader("audited")
        (first, second) = await engram.remember(writer, NewAtom("one", labels=["a"]), NewAtom("two", labels=["b"]))
        asked = await engram.ask(reader, labels=["a"])
        await engram.get(reader, second.id)
        # A subscription's push is recorded too, as method "subscribe".
        watch = await engram.subscribe(session.worlds["audited"].observer, labels=["b"])
        assert [atom.id for atom in await watch.next()] == [second.id]
        await watch.cancel()
        records = []
        for _ in range(500):  # the trail takes up to 50 ms to hold a read's record
            records = await engram.audit(session.admin, "admin", from_commit=second.commit)
            if len(records) >= 3:
                break
            await asyncio.sleep(0.01)
        assert [(record.method, record.ids, record.commit) for record in records] == [
            ("ask", (asked[0].id,), second.commit),
            ("get", (second.id,), second.commit),
            ("subscribe", (second.id,), second.commit),
        ]
        assert json.loads(records[0].query)["labels"] == ["a"]
        assert json.loads(records[2].query)["labels"] == ["b"]
        assert json.loads(records[2].query)["fromCommit"] == 0
        assert records[0].restriction == "{}" and records[0].world == "audited"
        await expect_code("notFound", engram.audit(session.admin, "nobody"))

    run(body())


def test_a_backup_restores_into_a_node_that_serves_it(node, tmp_path):
    import json
    import subprocess

    import blake3
    from conftest import _engramd, engramd_binary

    async def write_and_back_up():
        session = await with_world(node.tcp, node, "kept")
        (kept,) = await engram.remember(session.writer("kept"), NewAtom("kept across a restore"))
        written = []
        manifest = await engram.backup(session.admin, tmp_path / "backup", progress=written.append)
        assert written and written[-1] == sum(file["bytes"] for file in manifest["files"])
        with pytest.raises(ValueError, match="not empty"):
            await engram.backup(session.admin, tmp_path / "backup")
        return kept, manifest

    kept, manifest = run(write_and_back_up())
    assert manifest["lastCommit"] >= kept.commit
    assert [world["name"] for world in manifest["worlds"]] == ["kept"]
    assert json.loads((tmp_path / "backup" / "manifest.json").read_text()) == manifest
    for file in manifest["files"]:
        assert blake3.blake3((tmp_path / "backup" / file["name"]).read_bytes()).hexdigest() == file["blake3"]

    restored = subprocess.run(
        [engramd_binary(), "restore", "--from", str(tmp_path / "backup"), "--data", str(tmp_path / "restored")],
        capture_output=True,
        text=True,
    )
    assert restored.returncode == 0, restored.stderr
    with _engramd(tmp_path, "restored") as (fields, _data, _process):

        async def read_back():
            session = await engram.open_session(fields["tcp"], node.admin_key)
            atom = await engram.get(session.reader("kept"), kept.id)
            assert atom.text == "kept across a restore"

        run(read_back())


# Fleets


def test_the_fleet_status_of_a_node_alone_and_of_one_in_a_fleet(node, fleet_node):
    async def body():
        alone = await admin_session(node.tcp, node)
        _, node_key, _ = await alone.connection.challenge()
        status = await alone.membrane.fleet()
        assert (status.name, status.node_key, status.nodes, status.worlds) == ("", node_key, (), ())

        session = await with_world(fleet_node.tcp, fleet_node, "team/fleet")
        [receipt] = await engram.remember(session.writer("team/fleet"), NewAtom("written", kind="fact"))
        status = await session.membrane.fleet()
        _, node_key, _ = await session.connection.challenge()
        assert status.name != "" and status.node_key == node_key
        assert status.address == fleet_node.tcp
        assert status.confirmed_ago_ms is not None and status.confirmed_ago_ms < status.lease_ms
        assert [(n.key, n.address, n.slot) for n in status.nodes] == [(node_key, fleet_node.tcp, 0)]
        [world] = status.worlds
        assert (world.world, world.owner_key, world.owner_address) == ("team/fleet", node_key, fleet_node.tcp)
        assert (world.stream_position, world.held_position) == (1, 1)

    run(body())


def test_a_session_for_writing_follows_the_worlds_owner(fleet_pair):
    first, second = fleet_pair

    async def body():
        on_a = await with_world(first.tcp, first, "team/routed")
        await engram.remember(on_a.writer("team/routed"), NewAtom("on a", kind="fact"))
        _, a_key, _ = await on_a.connection.challenge()
        # Node B learns the world and its owner within the lease.
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            session = await engram.open_session_for_writing(second.tcp, first.admin_key, "team/routed")
            status = await session.membrane.fleet()
            if status.node_key == a_key:
                break
            assert asyncio.get_running_loop().time() < deadline, status
            await asyncio.sleep(0.02)
        # Written at node A, the owner: one chain, no refusal.
        await engram.remember(session.writer("team/routed"), NewAtom("through b", kind="fact"))
        [(_, seq, _)] = await engram.heads(on_a.reader("team/routed"))
        assert seq == 2

        # Node A stops: a session for writing opened at node B waits for A's lease to
        # lapse, and node B then takes the world.
        first.process.send_signal(signal.SIGTERM)
        assert first.process.wait(timeout=30) == 0

        async def acquire():
            session = await engram.open_session_for_writing(second.tcp, first.admin_key, "team/routed")
            sessions.append(session)
            return session.writer("team/routed")

        sessions = []
        await engram.remember_retrying(acquire, NewAtom("after a stopped", kind="fact"))
        on_b = await engram.open_session(second.tcp, first.admin_key)
        assert (await engram.generation(on_b.reader("team/routed"))).atoms == 3

    run(body())
