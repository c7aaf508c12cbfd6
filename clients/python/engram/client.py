"""Connection, login, graft and typed helpers for engram's capabilities."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import ssl
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Mapping, Optional, Sequence

import capnp
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def _load_schema() -> Any:
    # pycapnp resolves the standard imports (/capnp/stream.capnp, ...) only when the
    # directory holding its own `capnp` package is on the import path.
    imports = [str(Path(capnp.__file__).resolve().parent.parent)]
    path = Path(__file__).resolve().with_name("engram.capnp")
    return capnp.load(str(path), imports=imports)


#: The loaded contract: ``schema.Terminal``, ``schema.AtomKind``, ``schema.ErrorCode``, ...
schema = _load_schema()

#: The stable error codes, in schema order (``staleEpoch``, ``unauthenticated``, ...).
ERROR_CODES: tuple[str, ...] = tuple(
    name for name, _ in sorted(schema.ErrorCode.schema.enumerants.items(), key=lambda item: item[1])
)


class EngramError(Exception):
    """An error the node answered with: ``code`` is one of :data:`ERROR_CODES`, or
    ``None`` when the failure was not the node's answer (a broken connection)."""

    def __init__(self, code: Optional[str], message: str):
        super().__init__(f"{code}: {message}" if code else message)
        self.code = code
        self.message = message

    @classmethod
    def from_exception(cls, error: Exception) -> "EngramError":
        description = getattr(error, "description", None) or str(error)
        # Each proxying hop adds one "remote exception: " prefix.
        while description.startswith("remote exception: "):
            description = description[len("remote exception: "):]
        code, separator, message = description.partition(": ")
        if separator and code in ERROR_CODES:
            return cls(code, message)
        # A Python parent forwarding a child's call (pycapnp) reports the node's error
        # inside its own text: the node's code follows the last "remote exception: ".
        for line in description.splitlines():
            _, found, rest = line.rpartition("remote exception: ")
            code, separator, message = rest.partition(": ")
            if found and separator and code in ERROR_CODES:
                return cls(code, message)
        return cls(None, description)


async def call(promise: Any) -> Any:
    """Awaits a pycapnp call, raising :class:`EngramError` for the node's errors."""
    try:
        return await promise
    except capnp.KjException as error:
        raise EngramError.from_exception(error) from None


def load_key(path: str | os.PathLike) -> Ed25519PrivateKey:
    """Reads a key file (one line of 64 hex digits: a 32-byte ed25519 seed)."""
    path = Path(path)
    if path.stat().st_mode & 0o077:
        raise PermissionError(f"key file {path} is readable by group or others; run `chmod 600 {path}`")
    try:
        seed = bytes.fromhex(path.read_text().strip())
    except ValueError:
        seed = b""
    if len(seed) != 32:
        raise ValueError(f"key file {path} must hold one line of 64 hex digits (a 32-byte ed25519 seed)")
    return Ed25519PrivateKey.from_private_bytes(seed)


def public_key_bytes(key: Ed25519PrivateKey) -> bytes:
    """The 32 raw bytes of a key's public half."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def login_message(nonce: bytes, node_key: bytes, epoch: int) -> bytes:
    """The bytes a client signs to log in (schema ``loginDomain``)."""
    return schema.loginDomain.encode() + b"\0" + nonce + node_key + epoch.to_bytes(8, "big")


def signed_message(domain: str, message: bytes) -> bytes:
    """The bytes ``Signer.sign`` signs (schema ``signDomain``)."""
    encoded = domain.encode()
    return schema.signDomain.encode() + b"\0" + len(encoded).to_bytes(4, "big") + encoded + message


@dataclass
class NewAtom:
    """Content for a new atom; ``kind`` is a schema ``AtomKind`` name."""

    text: str
    kind: str = "observation"
    labels: Sequence[str] = ()
    importance: float = 0.5
    confidence: float = 1.0
    payload: bytes = b""
    vector: Sequence[float] = ()
    valid_from: int | None = None
    """When the atom starts to hold in the world (unix ms); ``None``: no claim."""
    valid_until: int = 0
    """When it stops holding (unix ms, excluded); 0: open-ended."""
    proposed: bool = False
    """Write it as a proposal: not current knowledge until someone approves it."""
    supersedes: Sequence[bytes] = ()
    """Ids of atoms this one replaces: each becomes ``superseded``."""
    links: Sequence[tuple[str, bytes]] = ()
    """Other links, as ``(LinkKind name, target id)``."""
    forbids: Sequence[str] = ()
    """What a constraint (``kind="constraint"``) forbids: words or phrases a plan must
    not contain (see :func:`check`)."""

    def fill(self, builder: Any) -> None:
        builder.kind = self.kind
        builder.text = self.text
        builder.importance = self.importance
        builder.confidence = self.confidence
        builder.proposed = self.proposed
        if self.forbids:
            forbids = builder.init("forbids", len(self.forbids))
            for index, term in enumerate(self.forbids):
                forbids[index] = term
        links = [("supersedes", target) for target in self.supersedes] + list(self.links)
        if links:
            built = builder.init("links", len(links))
            for index, (kind, target) in enumerate(links):
                built[index].kind = kind
                built[index].target = target
        if self.payload:
            builder.payload = self.payload
        labels = builder.init("labels", len(self.labels))
        for index, label in enumerate(self.labels):
            labels[index] = label
        if self.vector:
            builder.vector = list(self.vector)
        if self.valid_from is not None:
            interval = builder.validTime.init("interval")
            interval.fromUnixMs = self.valid_from
            interval.untilUnixMs = self.valid_until


@dataclass(frozen=True)
class AtomView:
    """A committed atom."""

    id: bytes
    world: str
    writer: bytes
    seq: int
    prev: bytes
    commit: int
    kind: str
    text: str
    labels: tuple[str, ...]
    importance: float
    confidence: float
    payload: bytes
    valid_time: tuple[int, int] | None = None
    """``(from_unix_ms, until_unix_ms)`` when the atom claims to hold in the world."""
    state: str = "asserted"
    """Its ``LifecycleState`` as of the answer (now, or the call's ``as_of``)."""
    links: tuple[tuple[str, bytes], ...] = ()
    """``(LinkKind name, target id)`` of each link."""
    forbids: tuple[str, ...] = ()
    """What it forbids, if it is a constraint."""

    @classmethod
    def read(cls, atom: Any) -> "AtomView":
        content = atom.content
        valid_time = None
        if content.validTime.which() == "interval":
            interval = content.validTime.interval
            valid_time = (interval.fromUnixMs, interval.untilUnixMs)
        return cls(
            id=bytes(atom.id),
            world=atom.world,
            writer=bytes(atom.writer),
            seq=atom.seq,
            prev=bytes(atom.prev),
            commit=atom.commit,
            kind=str(content.kind),
            text=content.text,
            labels=tuple(content.labels),
            importance=content.importance,
            confidence=content.confidence,
            payload=bytes(content.payload),
            valid_time=valid_time,
            state=str(atom.state),
            links=tuple((str(link.kind), bytes(link.target)) for link in content.links),
            forbids=tuple(content.forbids),
        )


@dataclass(frozen=True)
class Receipt:
    """The acknowledgement of one durable write."""

    id: bytes
    seq: int
    commit: int
    prev: bytes

    @classmethod
    def read(cls, receipt: Any) -> "Receipt":
        return cls(id=bytes(receipt.id), seq=receipt.seq, commit=receipt.commit, prev=bytes(receipt.prev))


@dataclass
class WorldCapabilities:
    """What a principal holds in one world; ``None`` where the right is not granted."""

    reader: Any = None
    writer: Any = None
    observer: Any = None


@dataclass
class Session:
    """The capabilities of one graft."""

    epoch: int
    epoch_head: bytes
    principal: str
    admin_principal: bool
    worlds: dict[str, WorldCapabilities] = field(default_factory=dict)
    signer: Any = None
    admin: Any = None

    def reader(self, world: str) -> Any:
        return self._held(world, "reader")

    def writer(self, world: str) -> Any:
        return self._held(world, "writer")

    def _held(self, world: str, right: str) -> Any:
        capability = getattr(self.worlds.get(world, WorldCapabilities()), right)
        if capability is None:
            raise EngramError(None, f"principal {self.principal!r} holds no {right} in world {world!r}")
        return capability


_NEVER = (1 << 64) - 1


def _ago(millis: int) -> Optional[int]:
    return None if millis == _NEVER else millis


@dataclass(frozen=True)
class FleetNode:
    """A node of the fleet; ``seen_ago_ms`` is ``None`` when it has not said it runs
    within the lease."""

    key: bytes
    address: str
    slot: int
    seen_ago_ms: Optional[int]
    confirmed_ago_ms: Optional[int]


@dataclass(frozen=True)
class FleetWorld:
    """A world of the fleet: its owner (``None``: no node owns it now) and its stream
    position against what the answering node holds."""

    world: str
    owner_key: Optional[bytes]
    owner_address: Optional[str]
    stream_position: int
    held_position: int


@dataclass(frozen=True)
class FleetStatus:
    """What a node knows of its fleet (``Membrane.fleet``); alone, ``name`` is empty and
    the lists are empty."""

    name: str
    node_key: bytes
    address: str
    lease_ms: int
    confirmed_ago_ms: Optional[int]
    nodes: tuple[FleetNode, ...]
    worlds: tuple[FleetWorld, ...]


class Membrane:
    """A logged-in principal's source of capabilities."""

    def __init__(self, client: Any):
        self.client = client

    async def graft(self) -> Session:
        """The current epoch and fresh capabilities under the policy in force now."""
        result = await call(self.client.graft())
        worlds = {}
        for entry in result.worlds:
            worlds[entry.world] = WorldCapabilities(
                reader=entry.reader if entry._has("reader") else None,
                writer=entry.writer if entry._has("writer") else None,
                observer=entry.observer if entry._has("observer") else None,
            )
        return Session(
            epoch=result.epoch.number,
            epoch_head=bytes(result.epoch.head),
            principal=result.principal.name,
            admin_principal=result.principal.admin,
            worlds=worlds,
            signer=result.signer,
            admin=result.admin if result._has("admin") else None,
        )

    async def fleet(self) -> FleetStatus:
        """The fleet this node is in, as it knows it (``Membrane.fleet``): its nodes, and
        each world the principal may use with its owner and stream position."""
        status = (await call(self.client.fleet())).status
        return FleetStatus(
            name=status.name,
            node_key=bytes(status.nodeKey),
            address=status.address,
            lease_ms=status.leaseMs,
            confirmed_ago_ms=_ago(status.confirmedAgoMs),
            nodes=tuple(
                FleetNode(
                    key=bytes(node.key),
                    address=node.address,
                    slot=node.slot,
                    seen_ago_ms=_ago(node.seenAgoMs),
                    confirmed_ago_ms=_ago(node.confirmedAgoMs),
                )
                for node in status.nodes
            ),
            worlds=tuple(
                FleetWorld(
                    world=world.world,
                    owner_key=bytes(world.ownerKey) or None,
                    owner_address=world.ownerAddress if len(world.ownerKey) else None,
                    stream_position=world.streamPosition,
                    held_position=world.heldPosition,
                )
                for world in status.worlds
            ),
        )

    async def revoke_token(self, token: bytes) -> None:
        """Revokes a token of this principal (``Membrane.revokeToken``): it, every token
        attenuated from it and every capability restored from them. Returns once durable."""
        await call(self.client.revokeToken(token))


class Connection:
    """An open connection and its bootstrap ``Terminal``."""

    def __init__(self, client: Any):
        self._client = client
        self.terminal = client.bootstrap().cast_as(schema.Terminal)
        #: The node's key when TLS authenticated it; a login signs only a challenge
        #: naming it.
        self.node_key: Optional[bytes] = None

    async def challenge(self) -> tuple[bytes, bytes, int]:
        """A fresh single-use nonce, the node's key and the epoch to sign."""
        result = await call(self.terminal.challenge())
        return bytes(result.nonce), bytes(result.nodeKey), result.epoch

    async def login(self, key: Ed25519PrivateKey) -> Membrane:
        """Signs a fresh challenge with ``key`` and returns the principal's membrane. A
        login refused because the epoch advanced between the challenge and the login
        (its nonce is then of the older epoch) is made once more with a fresh challenge."""
        challenge = await self.challenge()
        try:
            return await self._login_with(key, *challenge)
        except EngramError as error:
            if error.code != "unauthenticated":
                raise
            again = await self.challenge()
            if again[2] == challenge[2]:
                raise
            return await self._login_with(key, *again)

    async def _login_with(
        self, key: Ed25519PrivateKey, nonce: bytes, node_key: bytes, epoch: int
    ) -> Membrane:
        if self.node_key is not None and node_key != self.node_key:
            raise NodeKeyMismatch("this connection", node_key, self.node_key, "the node's TLS certificate")
        request = self.terminal.login_request()
        request.publicKey = public_key_bytes(key)
        request.nonce = nonce
        request.signature = key.sign(login_message(nonce, node_key, epoch))
        result = await call(request.send())
        return Membrane(result.membrane)

    async def restore(self, token: bytes, *, without_save: bool = False) -> "Restored":
        """Exchanges a token (see :func:`save`) for the live capability it names
        (``Terminal.restore``): no key, no login. With ``without_save``, the capability
        (and whatever is attenuated from it) cannot be saved: its authority ends with
        this connection (what a parent restores for a child)."""
        result = await call(self.terminal.restore(token, without_save))
        for kind in _CAPABILITY_INTERFACES:
            if result._has(kind):
                return Restored(kind, result.world, getattr(result, kind), self)
        raise EngramError(None, "the node restored the token as no capability")


@dataclass
class Restored:
    """A capability restored from a token: which (``reader``, ``writer``, ``observer`` or
    ``signer``), of which world (empty for a signer), and the capability itself."""

    kind: str
    world: str
    capability: Any
    connection: Connection  # kept open with this object


async def save(capability: Any) -> bytes:
    """A reader, writer, observer or signer as a token (``save()``), for
    :meth:`Connection.restore` on any connection. The token is a biscuit; any biscuit
    library can narrow it offline by appending a block of the schema's narrowing facts."""
    return bytes((await call(capability.save())).token)


async def revoke_token(admin: Any, token: bytes) -> None:
    """Revokes any principal's token (``Admin.revokeToken``)."""
    await call(admin.revokeToken(token))


def token_to_text(token: bytes) -> str:
    """A token as the text of a token file (base64url, as biscuit and the CLI write it)."""
    return base64.urlsafe_b64encode(token).decode()


def token_from_text(text: str) -> bytes:
    """A token from the text of a token file."""
    text = text.strip()
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class NodeKeyMismatch(EngramError):
    """The node presented another key than the one pinned: it is not the node meant,
    or its key changed."""

    def __init__(self, address: str, presented: bytes, expected: bytes, pinned_by: str):
        super().__init__(
            None,
            f"the node at {address} presented key {presented.hex()}, but {pinned_by} pins "
            f"{expected.hex()}: refusing it (if the node's key really changed, update the pin)",
        )
        self.presented = presented
        self.expected = expected


#: The DER prefix of an ed25519 SubjectPublicKeyInfo (RFC 8410); the key follows.
_ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


def default_known_nodes() -> Path:
    """``ENGRAM_KNOWN_NODES``, else ``$XDG_CONFIG_HOME/engram/known_nodes``, else
    ``~/.config/engram/known_nodes`` (as the Rust client and the CLI)."""
    if os.environ.get("ENGRAM_KNOWN_NODES"):
        return Path(os.environ["ENGRAM_KNOWN_NODES"])
    if os.environ.get("XDG_CONFIG_HOME"):
        return Path(os.environ["XDG_CONFIG_HOME"]) / "engram" / "known_nodes"
    return Path.home() / ".config" / "engram" / "known_nodes"


def _known_key(path: Path, address: str) -> Optional[tuple[bytes, int]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and fields[0] == address:
            return bytes.fromhex(fields[1]), number
    return None


def _record_key(path: Path, address: str, key: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as file:
        file.write(f"{address} {key.hex()}\n")
        file.flush()
        os.fsync(file.fileno())


def _node_key_of(certificate: bytes) -> bytes:
    """The ed25519 key of the node's certificate (DER)."""
    public_key = x509.load_der_x509_certificate(certificate).public_key()
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if not spki.startswith(_ED25519_SPKI_PREFIX) or len(spki) != len(_ED25519_SPKI_PREFIX) + 32:
        raise ssl.SSLError("the node's certificate does not carry an ed25519 key")
    return spki[len(_ED25519_SPKI_PREFIX):]


async def connect(
    address: str,
    *,
    node_key: Optional[bytes] = None,
    known_nodes: Optional[str | os.PathLike] = None,
) -> Connection:
    """Connects to ``HOST:PORT``, ``tls://HOST:PORT`` or ``unix:PATH``.

    Over TLS (a node started with ``--tls``) the node is authenticated by its ed25519
    key: ``node_key`` pins it (32 bytes; giving it makes a ``HOST:PORT`` address TLS);
    else the key the known-nodes file (``known_nodes``, default
    :func:`default_known_nodes`) records for the address is required, and the first
    key seen is recorded. Another key raises :class:`NodeKeyMismatch`; a login then
    signs only a challenge naming the authenticated key."""
    if address.startswith("unix:"):
        stream = await capnp.AsyncIoStream.create_unix_connection(address[len("unix:"):])
        return Connection(capnp.TwoPartyClient(stream))
    tls = address.startswith("tls://") or node_key is not None
    address = address.removeprefix("tls://")
    host, _, port = address.rpartition(":")
    if not tls:
        stream = await capnp.AsyncIoStream.create_connection(host=host, port=int(port))
        return Connection(capnp.TwoPartyClient(stream))
    if node_key is not None:
        expected, pinned_by, known = node_key, "node_key", None
    else:
        known = Path(known_nodes) if known_nodes is not None else default_known_nodes()
        found = _known_key(known, address)
        expected, pinned_by = (found[0], f"{known}:{found[1]}") if found else (None, "")
    seen: dict[str, bytes] = {}

    class _PinnedObject(ssl.SSLObject):
        # Checked inside the handshake, before a byte of engram's protocol is sent.
        def do_handshake(self) -> None:
            super().do_handshake()
            presented = _node_key_of(self.getpeercert(binary_form=True))
            seen["key"] = presented
            if expected is not None and presented != expected:
                raise ssl.SSLError("the node presented another key than the one pinned")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False  # no certificate authority: the key is the identity
    context.verify_mode = ssl.CERT_NONE
    context.sslobject_class = _PinnedObject
    try:
        stream = await capnp.AsyncIoStream.create_connection(
            host=host, port=int(port), ssl=context, server_hostname=schema.tlsServerName
        )
    except (ssl.SSLError, OSError) as error:
        presented = seen.get("key")
        if expected is not None and presented is not None and presented != expected:
            raise NodeKeyMismatch(address, presented, expected, pinned_by) from None
        raise EngramError(None, f"cannot connect to tls://{address}: {error}") from None
    if expected is None and known is not None:
        _record_key(known, address, seen["key"])
    connection = Connection(capnp.TwoPartyClient(stream))
    connection.node_key = seen["key"]
    return connection


@dataclass
class Inherited:
    """What a child started by ``engram spawn`` was given: which capability (``reader``,
    ``writer`` or ``observer``), of which world, and the capability itself."""

    kind: str
    world: str
    capability: Any
    client: Any  # the connection to the parent, kept open with this object


async def inherited() -> Inherited:
    """In a child started by ``engram spawn``: the one capability served it on the
    descriptor named by ``ENGRAM_FD`` (by the node, handed off, or by its parent,
    forwarding). The child needs no key and no network."""
    try:
        fd = int(os.environ["ENGRAM_FD"])
        kind = os.environ["ENGRAM_CAPABILITY"]
        world = os.environ["ENGRAM_WORLD"]
    except (KeyError, ValueError) as error:
        raise EngramError(None, f"this process was not started by `engram spawn` ({error})") from None
    if kind not in _CAPABILITY_INTERFACES:
        raise EngramError(None, f"ENGRAM_CAPABILITY is {kind!r}; expected reader, writer, observer or signer")
    stream = await capnp.AsyncIoStream.create_connection(sock=socket.socket(fileno=fd))
    client = capnp.TwoPartyClient(stream)
    return Inherited(kind, world, client.bootstrap().cast_as(_CAPABILITY_INTERFACES[kind]), client)


@dataclass
class Spawned:
    """A child started by :func:`spawn`, and what keeps its connection open: the
    handoff connection (the node serves the child), or the connections this process
    forwards the child's calls on."""

    process: subprocess.Popen
    hold: Any

    async def wait(self) -> int:
        """Waits for the child to exit, serving its calls meanwhile; its exit code."""
        # Waited for on a thread, so the event loop goes on serving the child's calls.
        return await asyncio.get_running_loop().run_in_executor(None, self.process.wait)


async def spawn(
    address: str,
    capability: Any,
    kind: str,
    world: str,
    command: Sequence[str],
    *,
    node_key: Optional[bytes] = None,
    known_nodes: Optional[str | os.PathLike] = None,
    **popen: Any,
) -> Spawned:
    """Starts ``command`` as a child whose only authority is ``capability`` (a ``reader``,
    ``writer``, ``observer`` or ``signer`` of ``world``, as ``kind`` says), served as the
    bootstrap capability of a Cap'n Proto connection on one end of a socket pair, the
    child's end being its descriptor 3 (``ENGRAM_FD``), as ``engram spawn`` does. The
    child needs no key and no network (see :func:`inherited`).

    With ``address`` a ``unix:PATH``, this process hands the child's connection to the
    node (schema ``handoffMagic``), which serves the capability itself, until the
    :class:`Spawned` is dropped or this process exits. Over TCP this process forwards
    the child's calls, on a node connection of the child's own where the capability is
    restored from a token the child never sees; over TLS that connection authenticates
    the node as :func:`connect` does with ``node_key`` or ``known_nodes``, before the
    token is sent. ``popen`` goes to ``subprocess.Popen``; without an ``env`` of its own
    the child inherits this process's environment but its ``ENGRAM_`` variables."""
    if kind not in _CAPABILITY_INTERFACES:
        raise EngramError(None, f"cannot hand a child a {kind!r}; a reader, writer, observer or signer")
    token = await save(capability)
    if not address.startswith("unix:"):
        connection = await connect(address, node_key=node_key, known_nodes=known_nodes)
        # The child's authority ends with this connection: it cannot save what it holds.
        restored = await connection.restore(token, without_save=True)
    parent_end, child_end = socket.socketpair()
    if address.startswith("unix:"):
        loop = asyncio.get_running_loop()
        with parent_end:
            hold = await loop.run_in_executor(None, _hand_off, address[len("unix:"):], token, parent_end)
    environment = popen.pop("env", None)
    if environment is None:
        # No credential of this process's (its key, token, node) reaches the child.
        environment = {name: value for name, value in os.environ.items() if not name.startswith("ENGRAM_")}
    environment = dict(environment)
    environment.update({"ENGRAM_FD": str(_CHILD_FD), "ENGRAM_CAPABILITY": kind, "ENGRAM_WORLD": world})

    def descriptor_3() -> None:
        os.dup2(child_end.fileno(), _CHILD_FD)

    try:
        process = subprocess.Popen(
            list(command), env=environment, pass_fds=(_CHILD_FD,), preexec_fn=descriptor_3, **popen
        )
    finally:
        child_end.close()
    if address.startswith("unix:"):
        return Spawned(process, hold)
    stream = await capnp.AsyncIoStream.create_connection(sock=parent_end)
    interface = _CAPABILITY_INTERFACES[kind]
    server = capnp.TwoPartyServer(stream, bootstrap=_Forwarder(restored.capability.cast_as(interface), interface))
    return Spawned(process, (server, restored.connection))


def _hand_off(path: str, token: bytes, node_end: socket.socket) -> socket.socket:
    """Hands ``node_end`` to the node on its Unix socket at ``path`` with ``token``;
    returns the handoff connection, which holds the child's connection open."""
    hold = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        hold.connect(path)
        socket.send_fds(hold, [schema.handoffMagic], [node_end.fileno()])
        hold.sendall(len(token).to_bytes(4, "little") + token)
        if _receive_exactly(hold, 1) == bytes([_HANDOFF_SERVED]):
            return hold
        length = min(int.from_bytes(_receive_exactly(hold, 4), "little"), _HANDOFF_REFUSAL_BYTES_MAX)
        refusal = _receive_exactly(hold, length).decode(errors="replace")
    except OSError as error:
        hold.close()
        raise EngramError(None, f"handing the child's connection to the node at {path}: {error}") from None
    hold.close()
    code, separator, message = refusal.partition(": ")
    raise EngramError(code, message) if separator and code in ERROR_CODES else EngramError(None, refusal)


def _receive_exactly(connection: socket.socket, length: int) -> bytes:
    received = b""
    while len(received) < length:
        chunk = connection.recv(length - len(received))
        if not chunk:
            raise ConnectionError("the node closed the handoff connection early")
        received += chunk
    return received


class _Forwarder:
    """Serves every method of ``interface`` by handing the call on to ``target`` (a
    Cap'n Proto tail call), so the node's answer, or its error, goes back unchanged."""

    def __init__(self, target: Any, interface: Any):
        self._target = target
        self._methods = set(interface.schema.method_names)
        self.schema = interface.schema

    def __getattr__(self, name: str) -> Any:
        method = name.removesuffix("_context")
        if method == name or method not in self._methods:
            raise AttributeError(name)

        async def forward(context: Any) -> None:
            request = self._target._request(method)
            params = context.params
            for field in params.schema.fieldnames:
                setattr(request, field, getattr(params, field))
            await context.tail_call(request)

        return forward


_CHILD_FD = 3
_HANDOFF_SERVED = 0
_HANDOFF_REFUSAL_BYTES_MAX = 4 * 1024
_CAPABILITY_INTERFACES = {
    "reader": schema.WorldReader,
    "writer": schema.WorldWriter,
    "observer": schema.Observer,
    "signer": schema.Signer,
}


async def open_session(address: str, key_path: str | os.PathLike, **trust: Any) -> Session:
    """Connects (``trust``: :func:`connect`'s ``node_key`` or ``known_nodes``), logs in
    with the key file and grafts."""
    return await _graft_over(await connect(address, **trust), key_path)


async def _graft_over(connection: Connection, key_path: str | os.PathLike) -> Session:
    """Logs in over ``connection`` with the key file and grafts; the session keeps its
    membrane and connection."""
    membrane = await connection.login(load_key(key_path))
    session = await membrane.graft()
    session.membrane = membrane  # type: ignore[attr-defined]
    session.connection = connection  # type: ignore[attr-defined]
    return session


async def open_session_for_writing(
    address: str, key_path: str | os.PathLike, world: str, **trust: Any
) -> Session:
    """Opens a session as :func:`open_session` does and, in a fleet, at the node that
    writes ``world`` now if another node does (``Membrane.fleet`` names it), so that a
    write goes where it can be written instead of being refused ``unavailable``. Over
    TLS the owner's key is pinned (the fleet names it), and it never leaves TLS for an
    address without it. When the owner cannot be reached (it died, say), it stays at
    ``address`` and waits, a lease and a half at most, for the owner's lease to lapse,
    after which this node takes the world on the next write."""
    session = await open_session(address, key_path, **trust)
    status = await session.membrane.fleet()
    held = next((held for held in status.worlds if held.world == world), None)
    if held is None or held.owner_key is None or held.owner_key == status.node_key:
        return session
    owner = held.owner_address or ""
    over_tls = owner.startswith("tls://")
    if not over_tls and (address.startswith("tls://") or trust.get("node_key") is not None):
        return session
    # As the node says, within the range engramd takes: a node's answer never makes
    # this wait long.
    lease = min(max(status.lease_ms, 100), 600_000) / 1000
    try:
        connection = await asyncio.wait_for(
            connect(owner, **({"node_key": held.owner_key} if over_tls else {})), lease
        )
    except Exception:  # noqa: BLE001 - the owner is away: its lease lapses, this node takes over
        deadline = asyncio.get_running_loop().time() + lease * 1.5
        while asyncio.get_running_loop().time() < deadline:
            status = await session.membrane.fleet()
            held = next((held for held in status.worlds if held.world == world), None)
            if held is None or held.owner_key is None or held.owner_key == status.node_key:
                break
            await asyncio.sleep(lease / 10)
        return session
    try:
        return await _graft_over(connection, key_path)
    except EngramError:
        # Refused there (the principal has not reached that node yet, say): the write is
        # answered here, naming the owner.
        return session


async def remember(writer: Any, *atoms: NewAtom) -> list[Receipt]:
    """Remembers one atom, or several as one all-or-nothing batch; returns once durable.
    Not safe to retry: see :func:`remember_keyed`."""
    return (await _send_remember(writer, atoms, b"")).receipts


@dataclass
class Remembered:
    """What a keyed ``remember`` answered: the receipts, and whether they are of a
    request done before (the node wrote nothing this time)."""

    receipts: list[Receipt]
    replayed: bool


#: The most bytes an idempotency key holds.
IDEMPOTENCY_KEY_BYTES_MAX = 64


def new_idempotency_key() -> bytes:
    """A fresh idempotency key: 16 random bytes as 32 hex digits (ASCII), so that it can be
    shown and given back. One per request, reused only to retry it."""
    return os.urandom(16).hex().encode()


async def remember_keyed(writer: Any, *atoms: NewAtom, key: bytes) -> Remembered:
    """Remembers atoms with an idempotency key (1 to 64 bytes): sent again with the same
    key and atoms within the node's window (24 hours), by this principal in this world,
    it writes nothing and answers the first request's receipts with ``replayed`` true.
    The same key with other atoms raises ``conflict``."""
    if not 1 <= len(key) <= IDEMPOTENCY_KEY_BYTES_MAX:
        raise ValueError(f"an idempotency key is 1 to {IDEMPOTENCY_KEY_BYTES_MAX} bytes; this one is {len(key)}")
    return await _send_remember(writer, atoms, key)


def is_retryable(error: BaseException) -> bool:
    """Whether a call that failed so may have been lost rather than refused, and may be
    sent again (a write only with an idempotency key): the node failed (``internal``),
    could not serve it now (``unavailable``), the connection broke, or connecting
    failed."""
    if isinstance(error, NodeKeyMismatch):
        return False  # an answer about who the node is, not a lost one
    if isinstance(error, EngramError):
        return error.code in (None, "internal", "unavailable")
    return isinstance(error, OSError)


async def remember_retrying(
    acquire: Callable[[], Awaitable[Any]],
    *atoms: NewAtom,
    key: Optional[bytes] = None,
    attempts: int = 3,
    on_retry: Optional[Callable[[int, Exception], None]] = None,
) -> Remembered:
    """Remembers atoms with ``key`` (default: a new one), trying up to ``attempts`` times
    in all while the failure :func:`is_retryable`, each time with a writer from
    ``acquire()`` (which may connect and log in again), after a pause that doubles from
    0.1 s. The key makes the retries safe: the atoms are written once. The error it
    raises carries the key as ``error.idempotency_key``: a write that failed
    ``unavailable`` may have been written, and is retried safely only with that key.
    ``on_retry(attempt, error)`` is told of each failed attempt that is tried again
    (from 1): the error raised is only the last one's."""
    key = key if key is not None else new_idempotency_key()
    pause = 0.1
    for attempt in range(1, attempts + 1):
        try:
            return await remember_keyed(await acquire(), *atoms, key=key)
        except Exception as error:  # noqa: BLE001 - retried or raised below
            if attempt == attempts or not is_retryable(error):
                error.idempotency_key = key
                raise
            if on_retry is not None:
                on_retry(attempt, error)
        await asyncio.sleep(pause)
        pause *= 2
    raise AssertionError("unreachable: the last attempt returns or raises")


async def _send_remember(writer: Any, atoms: Sequence[NewAtom], key: bytes) -> Remembered:
    if len(atoms) == 1:
        request = writer.remember_request()
        atoms[0].fill(request.init("atom"))
        request.idempotencyKey = key
        result = await call(request.send())
        return Remembered([Receipt.read(result.receipt)], result.replayed)
    request = writer.rememberBatch_request()
    request.idempotencyKey = key
    builders = request.init("atoms", len(atoms))
    for index, atom in enumerate(atoms):
        atom.fill(builders[index])
    result = await call(request.send())
    return Remembered([Receipt.read(receipt) for receipt in result.receipts], result.replayed)


async def transition(writer: Any, target: bytes, kind: str, reason: str = "") -> Receipt:
    """Moves the atom ``target`` to its next lifecycle state: ``kind`` is ``approve``,
    ``reject``, ``deprecate`` (each needs the approve right) or ``retract`` (its writer
    only); ``reason`` is the transition atom's text (empty: the transition's name).
    Returns the transition atom's receipt once durable. Illegal transitions raise
    ``conflict`` and change nothing."""
    request = writer.transition_request()
    request.target = target
    request.kind = kind
    request.reason = reason
    return Receipt.read((await call(request.send())).receipt)


async def get(reader: Any, atom_id: bytes, as_of: int = 0) -> AtomView:
    """The atom ``atom_id``; with ``as_of`` (a commit), ``notFound`` if it was committed
    after it."""
    request = reader.get_request()
    request.id = atom_id
    request.asOf = as_of
    return AtomView.read((await call(request.send())).atom)


def _fill_filter(
    query: Any,
    kinds: Iterable[str] = (),
    labels: Iterable[str] = (),
    writers: Iterable[bytes] = (),
    min_importance: float = 0.0,
    max_importance: float = 1.0,
    limit: int = 20,
    before_commit: int = 0,
    vector: Sequence[float] = (),
    text: str = "",
    valid_at: int | None = None,
    as_of: int = 0,
    states: Iterable[str] = (),
) -> None:
    """Fills a schema ``Query``; the one place ``ask`` and ``subscribe`` build filters."""
    for name, values in (
        ("kinds", list(kinds)),
        ("labels", list(labels)),
        ("writers", list(writers)),
        ("states", list(states)),
    ):
        built = query.init(name, len(values))
        for index, value in enumerate(values):
            built[index] = value
    query.minImportance = min_importance
    query.maxImportance = max_importance
    query.limit = limit
    query.beforeCommit = before_commit
    if vector:
        query.vector = list(vector)
    if text:
        query.text = text
    if valid_at is not None:
        query.validAt.instant = valid_at
    query.asOf = as_of


async def ask(reader: Any, **filters: Any) -> list[AtomView]:
    """Atoms matching every filter: newest first, or most relevant first with ``vector``
    (similarity), ``text`` (words) or both fused (see the schema's ``Hit.score``). The
    filters are ``ask_page``'s: ``kinds``, ``labels``, ``writers``, ``min_importance``,
    ``max_importance``, ``limit``, ``before_commit``, ``vector``, ``text``, ``valid_at``
    (unix ms: atoms claimed to hold in the world then), ``as_of`` (a commit: as the
    world stood then, states included) and ``states`` (``LifecycleState`` names; empty:
    current knowledge, i.e. asserted or approved; ``("asserted", "proposed",
    "approved")`` shows proposals beside decisions)."""
    return (await ask_page(reader, **filters)).atoms


@dataclass(frozen=True)
class AskPage:
    """One answer of ``ask_page``: the atoms, the node's warning (empty unless the answer
    is incomplete or was not served entirely by the indexes), and, when a newest-first
    answer stopped at the node's budget for one call, the ``before_commit`` to ask with
    for the next page (``None`` once the answer is complete)."""

    atoms: list[AtomView]
    warning: str
    resume_before_commit: int | None
    contradictions: list[tuple[bytes, ...]] = ()  # type: ignore[assignment]
    """For each atom, the ids of the live atoms that contradict it or that it contradicts."""


async def ask_page(
    reader: Any,
    kinds: Iterable[str] = (),
    labels: Iterable[str] = (),
    writers: Iterable[bytes] = (),
    min_importance: float = 0.0,
    max_importance: float = 1.0,
    limit: int = 20,
    before_commit: int = 0,
    vector: Sequence[float] = (),
    text: str = "",
    valid_at: int | None = None,
    as_of: int = 0,
    states: Iterable[str] = (),
) -> AskPage:
    """``ask``, with the node's warning and the cursor of an answer that stopped at the
    node's budget for one call (the schema's cost model)."""
    request = reader.ask_request()
    _fill_filter(
        request.init("query"),
        kinds=kinds,
        labels=labels,
        writers=writers,
        min_importance=min_importance,
        max_importance=max_importance,
        limit=limit,
        before_commit=before_commit,
        vector=vector,
        text=text,
        valid_at=valid_at,
        as_of=as_of,
        states=states,
    )
    result = await call(request.send())
    return AskPage(
        atoms=[AtomView.read(hit.atom) for hit in result.hits],
        warning=result.warning,
        resume_before_commit=result.resumeBeforeCommit or None,
        contradictions=[tuple(bytes(id) for id in hit.contradictions) for hit in result.hits],
    )


@dataclass(frozen=True)
class Violation:
    """One constraint a plan violates: the constraint atom (who stated it: ``writer``;
    when: ``commit``; why: ``text``) and its forbidden terms the plan contains."""

    constraint: AtomView
    matched: tuple[str, ...]


async def check(reader: Any, plan: str, labels: Sequence[str] = ()) -> list[Violation]:
    """The pre-flight check: every live constraint of the reader's world in scope for
    ``labels`` (constraints with no labels, or sharing one; every constraint when
    ``labels`` is empty) that ``plan`` violates, oldest first; ``[]`` when it violates
    nothing. A check cut short by the node's budget returns what it found: use
    :func:`check_page` to see its warning."""
    return (await check_page(reader, plan, labels))[0]


async def check_page(reader: Any, plan: str, labels: Sequence[str] = ()) -> tuple[list[Violation], str]:
    """:func:`check` with the node's warning (empty unless the check stopped at its budget)."""
    request = reader.check_request()
    request.plan = plan
    built = request.init("labels", len(labels))
    for index, label in enumerate(labels):
        built[index] = label
    result = await call(request.send())
    violations = [
        Violation(constraint=AtomView.read(found.constraint), matched=tuple(found.matched))
        for found in result.violations
    ]
    return violations, result.warning


@dataclass(frozen=True)
class Trust:
    """A writer's trust on a label: ``score`` = (1 + confirms) / (2 + confirms +
    corrects), from other principals' ``confirms`` and ``corrects`` links."""

    score: float
    confirms: int
    corrects: int


async def trust(reader: Any, writer: bytes, label: str = "") -> Trust:
    """The writer's trust in the reader's world on atoms carrying ``label`` ("": on all
    its atoms); ``permissionDenied`` through a restriction that hides atoms."""
    request = reader.trust_request()
    request.writer = writer
    request.label = label
    result = (await call(request.send())).trust
    return Trust(score=result.score, confirms=result.confirms, corrects=result.corrects)


async def replay(reader: Any, from_commit: int = 0, limit: int = 100) -> tuple[list[AtomView], int]:
    """Atoms after ``from_commit`` in commit order, and the cursor to continue from."""
    request = reader.replay_request()
    request.fromCommit = from_commit
    request.limit = limit
    result = await call(request.send())
    return [AtomView.read(atom) for atom in result.atoms], result.nextCommit


async def diff(
    reader: Any, from_commit: int, to_commit: int = 0, limit: int = 100
) -> tuple[list[AtomView], int]:
    """What changed between two commits: atoms committed after ``from_commit`` and at or
    before ``to_commit`` (0: now) in commit order, and the cursor to continue from
    (``to_commit`` once everything up to it was read)."""
    request = reader.diff_request()
    request.fromCommit = from_commit
    request.toCommit = to_commit
    request.limit = limit
    result = await call(request.send())
    return [AtomView.read(atom) for atom in result.atoms], result.nextCommit


async def heads(reader: Any, as_of: int = 0) -> list[tuple[bytes, int, bytes]]:
    """``(writer, seq, id)`` of every chain's head; with ``as_of`` (a commit), as the
    chains stood then."""
    request = reader.heads_request()
    request.asOf = as_of
    result = await call(request.send())
    return [(bytes(head.writer), head.seq, bytes(head.id)) for head in result.heads]


async def commit_at(reader: Any, unix_ms: int) -> int:
    """The last commit of the reader's world recorded at or before ``unix_ms`` (0 if
    none): the ``as_of`` a time names."""
    request = reader.commitAt_request()
    request.unixMs = unix_ms
    return (await call(request.send())).commit


@dataclass(frozen=True)
class Generation:
    """Where one world stands, as one reader may know it. ``last_commit`` unchanged since
    the previous call means nothing new for this reader; ``atoms`` is ``None`` through a
    restriction that hides atoms (counting what it lets through would be a scan)."""

    node_commit: int
    last_commit: int
    atoms: int | None


async def generation(reader: Any) -> Generation:
    """Where the reader's world stands: one small call, for a client that polls."""
    result = (await call(reader.generation())).generation
    return Generation(
        node_commit=result.nodeCommit,
        last_commit=result.lastCommit,
        atoms=result.atoms if result.counted else None,
    )


async def verify(reader: Any) -> dict:
    """``{"chains", "entries", "bad"}``; ``bad`` is ``None`` or ``(writer, seq, reason)``."""
    report = (await call(reader.verify())).report
    bad = None
    if report.result.which() == "bad":
        entry = report.result.bad
        bad = (bytes(entry.writer), entry.seq, entry.reason)
    return {"chains": report.chains, "entries": report.entries, "bad": bad}


def _fill_restriction(
    builder: Any,
    worlds: Sequence[str],
    kinds: Sequence[str],
    labels: Sequence[str],
    max_importance: float,
    expires_at_unix_ms: int,
    calls_per_second: int,
    atoms_per_second: int,
    without_approve: bool,
    without_save: bool,
) -> None:
    for name, values in (("worlds", worlds), ("kinds", kinds), ("labels", labels)):
        built = builder.init(name, len(values))
        for index, value in enumerate(values):
            built[index] = value
    builder.maxImportance = max_importance
    builder.expiresAtUnixMs = expires_at_unix_ms
    builder.rate.callsPerSecond = calls_per_second
    builder.rate.atomsPerSecond = atoms_per_second
    builder.withoutApprove = without_approve
    builder.withoutSave = without_save


async def _attenuate(capability: Any, returned: str, restriction: dict) -> Any:
    request = capability.attenuate_request()
    _fill_restriction(request.init("restriction"), **restriction)
    return getattr(await call(request.send()), returned)


def _restriction(
    worlds: Sequence[str] = (),
    kinds: Sequence[str] = (),
    labels: Sequence[str] = (),
    max_importance: float = 1.0,
    expires_at_unix_ms: int = 0,
    calls_per_second: int = 0,
    atoms_per_second: int = 0,
    without_approve: bool = False,
    without_save: bool = False,
) -> dict:
    return dict(
        worlds=worlds,
        kinds=kinds,
        labels=labels,
        max_importance=max_importance,
        expires_at_unix_ms=expires_at_unix_ms,
        calls_per_second=calls_per_second,
        atoms_per_second=atoms_per_second,
        without_approve=without_approve,
        without_save=without_save,
    )


async def attenuate_reader(reader: Any, **restriction: Any) -> Any:
    """A reader narrowed to the intersection of its rights and the restriction
    (``worlds``, ``kinds``, ``labels``, ``max_importance``, ``expires_at_unix_ms``), and
    limited to ``calls_per_second`` and ``atoms_per_second`` (0: no limit) on top of its
    holder's rates; ``without_approve`` takes away the approve right (for writers);
    ``without_save`` takes away ``save``, so the capability's authority cannot outlive
    the connection it is handed on."""
    return await _attenuate(reader, "reader", _restriction(**restriction))


async def attenuate_writer(writer: Any, **restriction: Any) -> Any:
    """A writer narrowed like :func:`attenuate_reader`."""
    return await _attenuate(writer, "writer", _restriction(**restriction))


async def sign(signer: Any, domain: str, message: bytes) -> bytes:
    """The node's 64-byte signature of ``message`` under ``domain`` (see :func:`signed_message`)."""
    request = signer.sign_request()
    request.domain = domain
    request.message = message
    return bytes((await call(request.send())).signature)


async def signer_public_key(signer: Any) -> bytes:
    return bytes((await call(signer.publicKey())).key)


async def create_world(admin: Any, name: str, vector_dimension: int = 0) -> Any:
    """Creates a world. With ``vector_dimension`` (1 to 4096), every vector written to it
    must have that many components; with 0, the world's first vector fixes it."""
    request = admin.createWorld_request()
    request.name = name
    request.vectorDimension = vector_dimension
    return (await call(request.send())).world


async def add_principal(
    admin: Any,
    name: str,
    public_key: bytes,
    grants: Mapping[str, str] = {},
    is_admin: bool = False,
) -> Any:
    """Adds a principal; ``grants`` maps world names to rights: letters r, w, o and a
    (approve), with an optional rate of calls and atoms a second, ``"rw@10/500"`` (0: no limit)."""
    request = admin.addPrincipal_request()
    request.name = name
    request.publicKey = public_key
    request.admin = is_admin
    built = request.init("grants", len(grants))
    for index, (world, rights) in enumerate(grants.items()):
        letters, _, rate = rights.partition("@")
        calls, _, atoms = rate.partition("/")
        built[index].world = world
        built[index].read = "r" in letters
        built[index].write = "w" in letters
        built[index].observe = "o" in letters
        built[index].approve = "a" in letters
        built[index].rate.callsPerSecond = int(calls or 0)
        built[index].rate.atomsPerSecond = int(atoms or 0)
    return (await call(request.send())).principal


@dataclass(frozen=True)
class AuditRecord:
    """One read in the audit trail: who (``principal``), where (``world``), which call
    (``method``), through which restriction and with which parameters (both JSON), the
    ids it received, and the commit its answer stood at."""

    principal: bytes
    world: str
    method: str
    restriction: str
    query: str
    ids: tuple[bytes, ...]
    commit: int
    sequence: int
    at_unix_ms: int


async def audit(
    admin: Any,
    principal: str,
    from_commit: int = 0,
    to_commit: int = 0,
    after_sequence: int = 0,
    limit: int = 100,
) -> list[AuditRecord]:
    """The audit trail of ``principal`` (a name, or a public key as hex): its reads
    answered at commits ``from_commit..=to_commit`` (``to_commit`` 0: no bound), in
    commit order, at most ``limit``; to page on, pass the last record's ``commit`` and
    ``sequence`` as ``from_commit`` and ``after_sequence``."""
    request = admin.audit_request()
    request.principal = principal
    request.fromCommit = from_commit
    request.toCommit = to_commit
    request.afterSequence = after_sequence
    request.limit = limit
    result = await call(request.send())
    return [
        AuditRecord(
            principal=bytes(record.principal),
            world=record.world,
            method=record.method,
            restriction=record.restriction,
            query=record.query,
            ids=tuple(bytes(id) for id in record.ids),
            commit=record.commit,
            sequence=record.sequence,
            at_unix_ms=record.atUnixMs,
        )
        for record in result.records
    ]


#: The manifest's file in a backup directory.
BACKUP_MANIFEST = "manifest.json"
_BACKUP_CHUNK_BYTES = 4 * 1024 * 1024


async def backup(
    admin: Any,
    destination: str | os.PathLike,
    progress: Optional[Callable[[int], None]] = None,
) -> dict:
    """Backs the node up into ``destination``, a directory that must not exist or be
    empty (``Admin.backup``): the node makes a consistent copy of its state while it
    goes on serving; every file is read, checked against the manifest's size and BLAKE3,
    and the manifest (``manifest.json``) is written last. ``progress`` is told the bytes
    written so far. Returns the manifest. ``engramd restore --from DIR --data DIR``
    restores it."""
    import json

    import blake3

    destination = Path(destination)
    if destination.exists() and any(destination.iterdir()):
        raise ValueError(f"{destination} is not empty; back up into a new directory")
    destination.mkdir(parents=True, exist_ok=True)
    held = (await call(admin.backup_request().send())).backup
    text = (await call(held.manifest_request().send())).manifest
    manifest = json.loads(text)
    written = 0
    for file in manifest["files"]:
        name = file["name"]
        # The names are the node's: a plain file name, or nothing is written.
        if not name or name == BACKUP_MANIFEST or name.startswith(".") or "/" in name or "\\" in name:
            raise ValueError(f"the node's manifest names a file {name!r}, which is no plain file name")
        hasher = blake3.blake3()
        offset = 0
        with open(destination / name, "wb") as output:
            while offset < file["bytes"]:
                request = held.read_request()
                request.file = name
                request.offset = offset
                request.length = _BACKUP_CHUNK_BYTES
                data = bytes((await call(request.send())).data)
                if not data:
                    break
                hasher.update(data)
                output.write(data)
                offset += len(data)
                written += len(data)
                if progress is not None:
                    progress(written)
            output.flush()
            os.fsync(output.fileno())
        if offset != file["bytes"] or hasher.hexdigest() != file["blake3"]:
            raise ValueError(f"{name} does not match the backup's manifest (its size or BLAKE3 differs)")
    with open(destination / BACKUP_MANIFEST, "w") as output:
        output.write(text)
        output.flush()
        os.fsync(output.fileno())
    return manifest


async def advance_epoch(admin: Any, head: bytes = bytes(32)) -> int:
    """Advances the epoch; returns the new epoch number once older capabilities fail."""
    request = admin.advanceEpoch_request()
    request.head = head
    return (await call(request.send())).epoch.number


class _Sink(schema.AtomSink.Server):
    """Queues pushed batches in order; a push is answered only once the consumer took
    its batch, so a slow consumer slows the node's pushes (stream flow control)."""

    def __init__(self, queue: asyncio.Queue):
        self._queue = queue

    async def push(self, atoms, **kwargs):
        taken = asyncio.get_running_loop().create_future()
        await self._queue.put(([AtomView.read(atom) for atom in atoms], taken))
        await taken

    async def end(self, reason, **kwargs):
        await self._queue.put((str(reason), None))


class Watch:
    """A live subscription; :meth:`next` returns batches of atoms in commit order."""

    def __init__(self, subscription: Any, queue: asyncio.Queue):
        self.subscription = subscription
        self._queue = queue

    async def next(self) -> list[AtomView]:
        """The next batch; raises :class:`EngramError` when the node ends the subscription
        (``staleEpoch``: graft again and resume from the last commit received)."""
        item, taken = await self._queue.get()
        if taken is None:
            raise EngramError.from_exception(Exception(item))
        taken.set_result(None)
        return item

    async def cancel(self) -> None:
        """Ends the subscription; returns once no further push will come."""
        await call(self.subscription.cancel())


async def subscribe(
    observer: Any,
    from_commit: int = 0,
    kinds: Iterable[str] = (),
    labels: Iterable[str] = (),
    writers: Iterable[bytes] = (),
    min_importance: float = 0.0,
    max_importance: float = 1.0,
) -> Watch:
    """Subscribes to atoms with commit > ``from_commit`` that match the filters."""
    queue: asyncio.Queue = asyncio.Queue()
    request = observer.subscribe_request()
    _fill_filter(
        request.init("filter"),
        kinds=kinds,
        labels=labels,
        writers=writers,
        min_importance=min_importance,
        max_importance=max_importance,
    )
    request.sink = _Sink(queue)
    request.fromCommit = from_commit
    result = await call(request.send())
    return Watch(result.subscription, queue)
