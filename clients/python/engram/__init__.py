"""Python client of engram, over pycapnp.

The contract (``engram.capnp``, the project's ``schema/engram.capnp``) is loaded at run
time, so every interface, method and struct of the schema is reachable as
``engram.schema``. The helpers below cover the common calls; each is a coroutine and
must run inside ``capnp.run(...)`` (pycapnp 2.x is asyncio-only)::

    import asyncio, capnp, engram

    async def main():
        session = await engram.open_session("127.0.0.1:7420", "engram-data/admin.key")
        receipts = await engram.remember(session.writer("team/auth"), engram.NewAtom("tokens expire after 1h", kind="fact"))
        print(receipts[0].id.hex(), receipts[0].commit)

    asyncio.run(capnp.run(main()))

Every error the node sends is raised as :class:`EngramError` with its stable ``code``.
"""

from .client import (
    ERROR_CODES,
    AskPage,
    AtomView,
    AuditRecord,
    Connection,
    EngramError,
    Generation,
    Membrane,
    NewAtom,
    Receipt,
    Session,
    WorldCapabilities,
    advance_epoch,
    ask,
    ask_page,
    attenuate_reader,
    attenuate_writer,
    audit,
    call,
    check,
    check_page,
    commit_at,
    connect,
    create_world,
    add_principal,
    diff,
    generation,
    get,
    heads,
    inherited,
    Inherited,
    load_key,
    login_message,
    open_session,
    public_key_bytes,
    remember,
    replay,
    schema,
    sign,
    signed_message,
    signer_public_key,
    subscribe,
    transition,
    trust,
    Trust,
    Violation,
    verify,
    Watch,
)

__all__ = [
    "ERROR_CODES",
    "AskPage",
    "AtomView",
    "AuditRecord",
    "Connection",
    "EngramError",
    "Generation",
    "Membrane",
    "NewAtom",
    "Receipt",
    "Session",
    "WorldCapabilities",
    "add_principal",
    "advance_epoch",
    "ask",
    "ask_page",
    "attenuate_reader",
    "attenuate_writer",
    "audit",
    "call",
    "check",
    "check_page",
    "commit_at",
    "connect",
    "create_world",
    "diff",
    "generation",
    "get",
    "heads",
    "inherited",
    "Inherited",
    "load_key",
    "login_message",
    "open_session",
    "public_key_bytes",
    "remember",
    "replay",
    "schema",
    "sign",
    "signed_message",
    "signer_public_key",
    "subscribe",
    "transition",
    "trust",
    "Trust",
    "Violation",
    "verify",
    "Watch",
]
