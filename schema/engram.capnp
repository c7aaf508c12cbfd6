@0xb65a4700047a77f7;
# engram's public capability contract, version 1.
#
# An agent connects (TCP or Unix socket) and receives a `Terminal` as the bootstrap
# capability. It logs in with an ed25519 key and receives a `Membrane`; `graft()` on the
# membrane hands out the capabilities its principal holds in the current epoch. Every
# other capability is reached from there: there is no ambient authority.
#
# Errors are Cap'n Proto exceptions whose description is `code: message`, where `code`
# is one of the names of `ErrorCode` below, spelled exactly as in this file
# (e.g. `staleEpoch: this capability was issued in epoch 3; the node is at epoch 4 ...`).
#
# Ids, writers and keys are raw bytes: an atom id and a hash are 32 bytes, a public key
# is a 32-byte ed25519 key, a signature is 64 bytes. Times are Unix milliseconds and are
# display claims only: nothing in engram is ordered by a wall clock; the node-wide
# `commit` number is the time axis.
#
# Cost model. No call may hold up other agents' calls, so every call is bounded:
# - A read examines at most 10,000 entries and returns at most 8 MiB of atoms (the
#   first atom always fits). Past either, `ask` and `replay` answer with what they
#   found and a cursor (`resumeBeforeCommit`, `nextCommit`); a ranked ask says in its
#   `warning` what its budget left unsearched. No read answers a whole world at once.
# - A read examines at most 256 entries on the node's RPC thread; one that needs more
#   continues off it, among a bounded number of read workers (`engramd --read-workers`),
#   as do every search and `verify`. Each such call, and each write, holds one of the
#   connection's calls in flight (`engramd --calls-in-flight-max`); past it,
#   `resourceExhausted`.
# - A subscription pushes at most 64 atoms and 8 MiB at a time, and only while Cap'n
#   Proto's flow-control window has room; between pushes it yields to other work.
# - A connection that leaves its answers unread stops being read once they pass a bound
#   (`engramd --connection-unread-bytes-max`), and is closed when it reads nothing
#   of them for `engramd --write-stall-timeout-ms`.
# - A connection must log in within `engramd --handshake-timeout-ms`; one peer (an IP
#   address, or a user on the Unix socket) holds at most `--connections-per-address-max`
#   connections and makes at most `--login-attempts-per-minute` login attempts; the
#   connections not logged in yet are bounded apart (`--pre-auth-connections-max`), and
#   past a limit the oldest of those is closed for a new connection before the new one
#   is refused, so a peer never logging in cannot starve those that do. A
#   logged-in connection that sends nothing for `--idle-timeout-ms` while it waits on
#   nothing (no call in flight, no live subscription) is closed.
# - A capability may carry a `Rate` (from its grant or an attenuation): past it, calls
#   fail with `resourceExhausted` and the connection is not read until the rate allows
#   a call again; a read that continues off the RPC thread costs one call for every 256
#   entries it may examine, and answers in part, with its cursor, when the rate cannot
#   pay (see `Rate`).

const schemaVersion :UInt32 = 1;
# Bumped when this contract changes incompatibly. Additions keep the number.

const loginDomain :Text = "engram/login/v1";
# Domain tag of the login message. A client signs
#   loginDomain || 0x00 || nonce (32 bytes) || nodeKey (32 bytes) || epoch (u64, big-endian)
# with its ed25519 key, using the nonce, node key and epoch from `Terminal.challenge`.

const tokenFormat :UInt32 = 1;
# Tokens (sturdy refs). `save()` on a WorldReader, WorldWriter, Observer or Signer
# returns a token: a biscuit v3 token (https://doc.biscuitsec.org), serialized as
# biscuit's protobuf bytes (base64url in the CLI's token files), whose authority block
# the node signs with its ed25519 node key (the `nodeKey` of `Terminal.challenge`, so
# anyone can verify a token offline). `Terminal.restore(token)` returns the live
# capability again, on any connection, without a login. The authority block holds
# these facts (shown in biscuit's datalog; a node reads every block as biscuit's typed
# protobuf terms, never as text, so a quote or a brace in a label or a domain is part
# of that string and nothing more), each exactly once but `revoked_with` and
# `lineage_rate` (a fact stated twice refuses the token):
#   engram(1);                       token format (this constant)
#   principal(hex:<32 bytes>);       the principal the capability acts as
#   right("reader");                 "reader", "writer", "observer" or "signer"
#   world("team/auth");              the world (not for a signer)
#   epoch(7);                        the epoch it was saved in
#   revoked_with(hex:<64 bytes>);    a token this capability was restored from: revoking
#                                    it revokes this one too (at most 64)
#   lineage(hex:<32 bytes>);         the node of its rate lineage it stands at
#   lineage_rate(hex:<32 bytes>, 10, 0);  each rate set along the lineage, with its key
# and the narrowing facts of the saved capability's restriction. A holder attenuates a
# token offline, with any biscuit library, by appending blocks of narrowing facts
# (never rules or checks):
#   kinds({"fact", "decision"});     only these kinds
#   labels({"public"});              only these labels
#   max_importance(500000);          importance at most this many millionths
#   expires(2026-12-01T00:00:00Z);   every call fails with permissionDenied from then
#   rate(10, 100);                   calls and atoms per second (0: no limit on that one)
#   without_approve(true);           takes away the approve right
#   without_save(true);              takes away save (see `Restriction.withoutSave`)
#   domains({"agent/report"});       a signer signs only these domains
# Every fact narrows what the facts before it allowed, like `attenuate`: facts in one
# block or in many intersect, so a block can only narrow. Rates belong to a lineage:
# a capability's root (a graft) starts one, and every rate set along the way (by
# `attenuate` or by a block's `rate` fact) is a node of it whose key derives from its
# parent's and its rate, so the same narrowing of the same capability, online or
# offline, made any number of times, is one node: one bucket shared by every copy
# saved, restored or narrowed from it. A call draws on the bucket of every node on its
# way from the root, so copies never buy more than their root allows. A token names
# the epoch it was saved in; one naming a later epoch than the node's is refused.
# `restore` refuses, naming the reason:
#   unauthenticated   bytes that are not a token, a token not signed by this node, a
#                     block altered, removed or signed by a third party, a block
#                     holding a rule, a check or a fact not above (an unknown narrowing
#                     would widen what its writer meant to allow), a fact that narrows
#                     what the token does not hold (`domains` in a token of no signer;
#                     `kinds`, `labels` or `max_importance` in a signer's), or a revoked
#                     token (`Membrane.revokeToken`, `Admin.revokeToken`);
#   staleEpoch        a token saved in an older epoch (save again after grafting);
#   permissionDenied  a principal since removed, or no longer granted the right.
# Tokens are at most 64 KiB and 32 blocks.

const tlsServerName :Text = "engram-node";
# Transport security off the local machine. A node started with `--tls` speaks TLS 1.3
# (and nothing older) on its TCP listeners, before any Cap'n Proto; its Unix socket and
# plain TCP on loopback stay plaintext. Its certificate is self-signed, and its subject
# public key is the node's ed25519 key — the same key `Terminal.challenge` returns and a
# login signs — so a client authenticates the node by that key alone, with no
# certificate authority: it pins the key (given, or recorded the first time it
# connected), accepts the handshake only when the certificate carries it and the
# handshake is signed with it, and checks that the challenge names the same key. A
# relay cannot then log in as its victim: it can neither finish the handshake as the
# node nor read what passes through it. The name the certificate is issued to (and a
# client sends) is `tlsServerName`; no check depends on it. Clients write `tls://HOST:PORT`.

const handoffMagic :Data = "ENGRAMHO";
# Handing a spawned child's connection to the node (what `engram spawn` does when it
# reaches the node over its Unix socket). Cap'n Proto cannot carry a file descriptor, so
# this is a short exchange of its own on a fresh connection to the node's Unix socket,
# told apart from Cap'n Proto by its first 8 bytes (a Cap'n Proto stream never starts
# with them: they would announce over a billion segments). The parent sends:
#   handoffMagic (8 bytes), carrying one descriptor (SCM_RIGHTS): its end of a
#     Unix stream socket pair whose other end is the child's;
#   the length of a token (u32, little-endian; at most 64 KiB), then the token
#     (see `tokenFormat`).
# The node restores the token as `Terminal.restore` would (a login attempt against the
# peer's login rate) and answers one byte: 0, then it serves the capability as the
# bootstrap capability of a Cap'n Proto connection on the descriptor: the child's calls
# reach the node with no hop through its parent, under the limits of any connection;
# or 1, then a refusal (u32 little-endian length, at most 4 KiB, then UTF-8 text that
# starts with the error code, e.g. "unauthenticated: ..."), and it closes both. It
# refuses a descriptor that is not a connected Unix stream socket, no descriptor or
# more than one, and a handoff not sent within the handshake timeout. After a 0 the
# parent sends nothing more and keeps this connection open: the child's connection
# lasts while it does, and the node closes it when the child's connection ends.

const signDomain :Text = "engram/sign/v1";
# Domain tag of `Signer.sign`. The signed bytes are
#   signDomain || 0x00 || length of domain (u32, big-endian) || domain (UTF-8) || message

enum ErrorCode {
  # The stable codes that begin every exception description (`code: message`).
  staleEpoch @0;        # The capability was issued in an older epoch: graft again.
  unauthenticated @1;   # Login failed. One message for every cause (unknown key, bad
                        # signature, reused or unknown nonce): it never tells whether a
                        # key is registered. Or a token was refused (see `tokenFormat`;
                        # the message names why).
  permissionDenied @2;  # The principal or capability does not hold the right for this call.
  invalidArgument @3;   # The request is malformed or out of range; nothing was changed.
  notFound @4;          # The named world, principal or atom does not exist.
  resourceExhausted @5; # A configured limit was reached (sizes, connections, calls, rate).
  conflict @6;          # The request conflicts with current state (exists, archived, ...).
  unavailable @7;       # The node cannot serve this now (shutting down, not yet built).
  internal @8;          # A bug or storage failure inside the node; the request may be retried
                        # (a write safely only with an idempotency key: see `remember`).
}

enum AtomKind {
  # What an atom records. New kinds are added at the end; old ordinals never change.
  observation @0;  # Something seen or measured.
  fact @1;         # Something held to be true.
  decision @2;     # A choice that was made.
  plan @3;         # An intended course of action.
  constraint @4;   # A negative rule agents check before acting.
  correction @5;   # A statement that another atom was wrong.
  message @6;      # A message from one agent to others.
  question @7;     # An open question.
  preference @8;   # A stated preference of a user or agent.
  transition @9;
  # A lifecycle transition of another atom, written by `WorldWriter.transition`: its one
  # link (approves, rejects, deprecates or retracts) names the atom it changes, and its
  # text is the reason. It stands as written (no transition acts on a transition) and
  # is left out of current knowledge (see `Query.states`) unless asked for by kind.
}

enum LifecycleState {
  # Where an atom stands. An atom starts asserted, or proposed when written with
  # `AtomContent.proposed`; transitions move it (ARCHITECTURE.md, Lifecycle, has the
  # whole table):
  #   approve:   proposed or asserted -> approved
  #   reject:    proposed -> rejected
  #   deprecate: asserted or approved -> deprecated
  #   supersede: any state but rejected, superseded and retracted -> superseded
  #   retract:   any state but rejected, superseded and retracted -> retracted (its writer only)
  # Any other transition fails with `conflict` and changes nothing. Rejected, superseded
  # and retracted are final. Current knowledge is what is asserted or approved.
  asserted @0;    # Stated by its writer; the state of every atom written without one.
  proposed @1;    # Put forward for approval; not yet knowledge.
  approved @2;    # Approved by a principal holding the approve right.
  rejected @3;    # A proposal that was turned down.
  deprecated @4;  # No longer to be relied on, though not replaced.
  superseded @5;  # Replaced by an atom that `supersedes` it.
  retracted @6;   # Withdrawn by its writer.
}

enum TransitionKind {
  # What `WorldWriter.transition` does to its target (supersession is a `supersedes`
  # link on the replacing atom instead).
  approve @0;     # Needs the approve right.
  reject @1;      # Needs the approve right.
  deprecate @2;   # Needs the approve right.
  retract @3;     # Only the target's writer may retract it.
}

enum LinkKind {
  # How an atom relates to an earlier one.
  supersedes @0;
  contradicts @1;
  confirms @2;
  corrects @3;
  derivedFrom @4;
  approves @5;     # Carried by transition atoms only (see `AtomKind.transition`).
  rejects @6;      # Carried by transition atoms only.
  deprecates @7;   # Carried by transition atoms only.
  retracts @8;     # Carried by transition atoms only.
  # A `supersedes` link makes its target superseded when the atom is written: the
  # target must be in the same world and visible to the writer's capability (else
  # `notFound`: an atom of another world is not found, whether or not it exists) and not
  # already final (else `conflict`); superseding
  # another writer's atom needs the approve right. A proposal cannot supersede.
  # (Links written before lifecycles existed changed no state, and still do not.)
}

struct Link {
  # A typed reference from one atom to another.
  kind @0 :LinkKind;
  target @1 :Data;
  # The target atom's id (32 bytes). It need not be in the same world, nor exist, except
  # for `supersedes` and the transition kinds, whose target must be in this world (see
  # `LinkKind`); only links within a world count for contradictions and trust.
}

struct TimeInterval {
  # A claimed interval of validity in the world (not in the node).
  fromUnixMs @0 :Int64;
  untilUnixMs @1 :Int64;  # 0 means open-ended; otherwise it must be greater than fromUnixMs.
}

struct AtomContent {
  # What a writer supplies for one atom. The node adds world, writer, seq, prev, commit
  # and the recording time, and hashes all of it into the atom's id.
  kind @0 :AtomKind;
  text @1 :Text;              # Required, non-empty UTF-8, at most the node's text limit (64 KiB).
  payload @2 :Data;           # Optional structured payload (opaque bytes, e.g. JSON); empty = none.
  labels @3 :List(Text);      # Distinct, non-empty, at most 128 bytes each, at most 64 labels.
  links @4 :List(Link);       # At most 64 links.
  importance @5 :Float32 = 0.5;  # In [0, 1].
  confidence @6 :Float32 = 1.0;  # In [0, 1].
  vector @7 :List(Float32);
  # Optional embedding; finite components, not all zero. The first vector written to a
  # world fixes its dimension; later ones must match it.
  validTime :union {
    unknown @8 :Void;         # No claim about when it holds in the world.
    interval @9 :TimeInterval;
  }
  proposed @10 :Bool;
  # Write it as a proposal (state `proposed`): found only by asks that ask for
  # proposals, until someone holding the approve right approves it. False: asserted.
  forbids @11 :List(Text);
  # What a constraint (kind `constraint`, only) forbids, for `WorldReader.check`: words
  # or phrases a plan must not contain, e.g. ["requests"] for "do not use library
  # `requests` for HTTP; use `httpx`" (the text says why and what instead). At most 64
  # terms, each 1 to 16 words (runs of letters and digits) and at most 128 bytes,
  # distinct. A term matches a plan whose words contain its words in order and next to
  # each other, ignoring case: "left-pad" matches "use left pad", "requests" does not
  # match "request".
}

struct Atom {
  # A committed, immutable atom.
  id @0 :Data;          # 32 bytes: the BLAKE3 hash of its chain entry (store/FORMAT.md).
  world @1 :Text;
  writer @2 :Data;      # The writer principal's public key (32 bytes).
  seq @3 :UInt64;       # Position in the (world, writer) chain, starting at 1.
  prev @4 :Data;        # The previous entry's id in that chain; 32 zero bytes for seq 1.
  commit @5 :UInt64;    # Node-wide commit number; strictly increasing, starting at 1.
  recordedAtUnixMs @6 :Int64;  # The node's wall clock when it committed (display only).
  content @7 :AtomContent;
  state @8 :LifecycleState;
  # Where the atom stands as of the answer: now, or at the call's `asOf` (and, for
  # `diff`, at its `toCommit`).
}

struct Receipt {
  # The acknowledgement of one durable write.
  id @0 :Data;       # The atom's id, which is also its chain entry hash.
  seq @1 :UInt64;
  commit @2 :UInt64;
  prev @3 :Data;     # The chain entry this one extends.
}

struct Query {
  # Filters of `WorldReader.ask` and `Observer.subscribe`. Every empty list means "no filter".
  kinds @0 :List(AtomKind);      # The atom's kind is one of these.
  labels @1 :List(Text);         # The atom carries every one of these labels.
  writers @2 :List(Data);        # The atom was written by one of these public keys.
  minImportance @3 :Float32 = 0.0;
  maxImportance @4 :Float32 = 1.0;
  limit @5 :UInt32 = 20;         # At most this many hits (1 to the node's limit, 1000).
  beforeCommit @6 :UInt64;       # Only atoms with commit < this; 0 = no bound. For paging.
  vector @7 :List(Float32);
  # Similarity search: rank atoms that carry a vector by cosine similarity to this one
  # (same dimension as the world's vectors, finite, not all zero), weighed with
  # importance and recency. Every filter above applies inside the search, so asking for
  # k hits returns k when k matching atoms carry vectors. Empty: a structured ask.
  explain @8 :Bool;              # Fill `Hit.explanation` with each factor of the score.
  # A text hit's relevance comes from its rank by BM25 computed with the word
  # statistics of this world alone (no other world moves it); the explanation shows
  # the BM25 score too, except through a restriction that hides atoms (the world's
  # statistics count them): then text is ranked with uniform word statistics (a hit
  # weighed by its own words only), the explanation shows its rank only, and trust is
  # neutral.
  text @9 :Text;
  # Lexical search: rank atoms whose text has these words (BM25; words split at anything
  # that is not a letter or digit, case-insensitive). With `vector` too, the two rankings
  # are fused by reciprocal rank. Filters apply inside the search. Empty: no text search.
  validAt :union {
    # When the atom holds in the world (its claimed `validTime`), apart from when the node
    # recorded it.
    anyTime @10 :Void;       # No filter on valid time.
    instant @11 :Int64;
    # Only atoms whose `validTime` is an interval holding at this instant (unix ms):
    # `fromUnixMs <= instant` and (`untilUnixMs` is 0 or `instant < untilUnixMs`). An atom
    # that makes no claim (`unknown`) does not match.
  }
  asOf @12 :UInt64;
  # Time travel: answer as things stood at this commit, counting only atoms committed
  # at or before it (0: now). Unlike `beforeCommit`, which pages through an answer, it
  # names a moment; states (`states`, `Atom.state`) are as they stood then too.
  # `invalidArgument` in a subscription's filter.
  states @13 :List(LifecycleState);
  # Only atoms in one of these states. Empty: current knowledge, i.e. asserted or
  # approved atoms, and no transition atoms unless `kinds` names them. Ask for
  # `[asserted, proposed, approved]` to see proposals beside decisions; every hit's
  # `atom.state` says which is which. Ignored by subscriptions, which deliver every atom
  # (transitions included) as it is committed.
}

struct Hit {
  # One answer of `ask`.
  atom @0 :Atom;
  score @1 :Float64;
  # Higher is better. Structured asks rank by recency (newest first); the others by
  #   lifecycle × (0.7 × relevance + 0.1 × importance + 0.1 × recency + 0.1 × trust)
  # where relevance is the cosine similarity for a vector ask, and for a text or
  # text-and-vector ask the reciprocal-rank fusion Σ 1 / (60 + rank) of its rankings,
  # scaled to [0, 1]; recency is commit / last commit; trust is the mean of the writer's
  # on each of the atom's first 8 labels (see `WorldReader.trust`; on all its atoms for
  # an atom without labels; 0.5 through a restriction that hides atoms);
  # lifecycle is 1 approved, 0.9 asserted, 0.6 proposed, 0.4 deprecated, 0.2 otherwise.
  similarity @2 :Float32;  # Cosine similarity to the query vector; 0 for structured asks.
  explanation @3 :Text;    # With `Query.explain`: each factor and weight of the score.
  contradictions @4 :List(Data);
  # The ids of the live atoms (asserted, proposed or approved, as of the answer) this
  # reader may see that contradict this one or that it contradicts (`contradicts`
  # links within the world), so a conflict shows instead of the newest silently
  # winning: at most 16, looked for among at most 128 links, its own first, then the
  # newest made to it.
}

struct Violation {
  # One constraint a plan violates (`WorldReader.check`).
  constraint @0 :Atom;
  # Who stated it (`writer`), when (`commit`, `recordedAtUnixMs`), why (`content.text`),
  # and its state (asserted or approved).
  matched @1 :List(Text);
  # Its forbidden terms that the plan contains, as the constraint spells them.
}

struct Trust {
  # What other principals' atoms said of one writer's atoms: each `confirms` link from
  # another writer's atom raises its trust on the target's labels (its first 8) and on
  # all its atoms, each `corrects` link lowers them; one atom's second link of the same
  # kind to the same target counts nothing. score = (1 + confirms) / (2 + confirms + corrects): 0.5 with no evidence,
  # nearer 1 or 0 the more there is. Links count from the moment they are written, and
  # stay counted when their atom later changes state.
  score @0 :Float64;
  confirms @1 :UInt64;
  corrects @2 :UInt64;
}

struct Restriction {
  # A narrowing applied by `attenuate`. The new capability's rights are the intersection
  # of the holder's and this restriction: an empty list or a default value narrows nothing,
  # and nothing can ever widen.
  worlds @0 :List(Text);   # The capability's world must be one of these.
  kinds @1 :List(AtomKind);
  # Writers may write only these kinds; readers see only these kinds. A transition atom
  # is of kind `transition`: a writer narrowed to kinds without it makes no transitions
  # (not even retracting its own atoms), and a reader narrowed so sees none.
  labels @2 :List(Text);
  # Writers must give every atom at least one label and only labels from this set;
  # readers see only atoms that carry at least one of these labels (so a reader narrowed
  # to `public` reads an atom labelled both `public` and `secret`).
  maxImportance @3 :Float32 = 1.0;
  # Writers may not write atoms above it; readers see only atoms at or below it.
  expiresAtUnixMs @4 :Int64;
  # 0 = no expiry; after it every call is `permissionDenied`, and a subscription ends
  # with `permissionDenied` when it expires, whether or not anything is delivered.
  #
  # What a restriction hides. A reader or observer whose restriction hides atoms (by
  # kind, label or importance) learns nothing of a hidden atom from any method: not its
  # content, its id, its writer, nor that it exists. No answer contains one; counts
  # (`verify`'s entries and chains, `ask`'s warning) count only visible atoms; `heads`
  # shows, for each writer with a visible atom, its newest visible atom (not the
  # chain's true head) and nothing of a writer with none; `verify` checks every entry
  # but names a bad one only when it is a visible atom whose bytes changed. What it can
  # learn, by the nature of hash chains and a node-wide commit counter: a visible
  # atom's `seq` and `prev` show that its writer wrote entries before it that the reader
  # may not see, and a cursor (`nextCommit`, `resumeBeforeCommit`) is a node-wide commit
  # number, which may be that of an atom the call examined and did not return. And a
  # visible atom's lifecycle state, now and as of any commit, follows every transition
  # and `supersedes` link that acted on it, those of atoms the reader may not see
  # included (a `public` atom superseded by a `secret` one reads `superseded`): so a
  # visible atom's state can show that, and as of which commit, a hidden atom acted on
  # it, though `diff` lists only the visible atoms that did.
  rate @5 :Rate;
  # How fast the new capability, and every capability attenuated from it, may be used
  # (see `Rate`); on top of every rate already on the holder's capability.
  withoutApprove @6 :Bool;
  # Takes away the approve right (see `Grant.approve`): a writer that may only
  # propose, assert and retract its own atoms.
  withoutSave @7 :Bool;
  # Takes away `save`: the new capability, and every capability attenuated from it,
  # answers `save` with `permissionDenied`, so its authority cannot outlive the
  # connection (or handoff) it was handed on. A capability a node serves to a child
  # handed off on its Unix socket is narrowed so; `engram spawn` (and the clients'
  # spawn) narrow a capability so before they forward it to a child over TCP.
}

struct Epoch {
  number @0 :UInt64;            # Starts at 1 on a new node; only ever increases.
  head @1 :Data;                # 32 bytes chosen by the operator (e.g. a policy hash).
  advancedAtUnixMs @2 :Int64;   # Display only.
}

struct Generation {
  # Where one world stands, as one reader may know it (`WorldReader.generation`).
  nodeCommit @0 :UInt64;
  # The node's last commit when this was answered: every read after it sees at least
  # what was committed up to it.
  lastCommit @1 :UInt64;
  # The commit of the world's newest atom (0 while it has none). Through a restriction
  # that hides atoms, `nodeCommit` instead: the reader learns nothing of hidden writes,
  # at the price of seeing a change where none is visible to it.
  atoms @2 :UInt64;
  # Atoms in the world; 0 through a restriction that hides atoms (see `counted`).
  counted @3 :Bool;
  # Whether `atoms` counts the world: false through a restriction that hides atoms,
  # since counting what it lets through would be a scan.
}

struct ChainHead {
  # The last entry of one (world, writer) chain.
  writer @0 :Data;
  seq @1 :UInt64;
  id @2 :Data;
}

struct BadEntry {
  # The first entry that failed verification.
  world @0 :Text;
  writer @1 :Data;
  seq @2 :UInt64;
  reason @3 :Text;
}

struct VerifyReport {
  chains @0 :UInt64;    # Chains checked.
  entries @1 :UInt64;   # Entries checked (up to and including a bad one).
  result :union {
    ok @2 :Void;
    bad @3 :BadEntry;
  }
}

struct Grant {
  # The rights a principal holds in one world.
  world @0 :Text;
  read @1 :Bool;
  write @2 :Bool;
  observe @3 :Bool;
  rate @4 :Rate;
  # How fast the principal may use the world, across all its logins and every
  # capability it grafts there (default: no limit).
  approve @5 :Bool;
  # May approve, reject and deprecate atoms of the world, and supersede other writers'
  # atoms (`WorldWriter.transition`, `supersedes` links). Needs `write` to be used.
}

struct Rate {
  # A token bucket of calls and of atoms written: each holds one second's worth (at
  # least one) and refills at the rate, so bursts of up to a second's worth pass at once
  # and more wait. 0 sets no limit. Past it, a call fails with `resourceExhausted` and
  # does nothing, and the node reads no more calls from that connection until the rate
  # allows one again (at most a second), so a client that keeps calling costs it
  # nothing meanwhile. A read that examines more than the RPC thread's share of entries
  # (see the cost model) draws one more call for each 256 entries it may examine (39
  # more, or a second's worth when that is fewer); when the bucket cannot pay, it
  # answers with the part read so far and its cursor. Rates only narrow: a capability
  # obeys its grant's rate and the rate of every restriction on its way from the graft,
  # so attenuating cannot buy more.
  callsPerSecond @0 :UInt32;  # Calls through the capability.
  atomsPerSecond @1 :UInt32;  # Atoms written through it (a batch counts each one).
}

struct PrincipalInfo {
  name @0 :Text;
  publicKey @1 :Data;
  admin @2 :Bool;        # Admins hold every right in every world and the `Admin` capability.
  grants @3 :List(Grant);
}

enum WorldState {
  active @0;    # Readable and writable.
  archived @1;  # Readable; writes fail with `conflict` until it is resumed.
}

struct WorldInfo {
  name @0 :Text;  # Lowercase segments of [a-z0-9._-] separated by '/', at most 128 bytes.
  state @1 :WorldState;
  atoms @2 :UInt64;
  vectorDimension @3 :UInt32;
  # The dimension every vector in the world has: set at creation, or by the world's
  # first vector when it was created without one; 0 until then.
}

struct AuditRecord {
  # One read, as the audit trail keeps it (`Admin.audit`).
  principal @0 :Data;   # Who read (public key).
  world @1 :Text;
  method @2 :Text;      # ask, check, get, replay, diff, or subscribe (one push).
  restriction @3 :Text; # The capability's restriction as JSON: only what it narrows; {} for none.
  query @4 :Text;       # The method's parameters as JSON (a query vector by its dimensions only).
  ids @5 :List(Data);   # The ids answered, in the answer's order.
  commit @6 :UInt64;    # The node's last commit when the read's snapshot was taken.
  sequence @7 :UInt64;  # Unique in the trail; orders the records of one commit.
  atUnixMs @8 :Int64;   # The node's clock when it answered (display only).
}

struct Health {
  version @0 :Text;      # engramd's version.
  epoch @1 :Epoch;
  lastCommit @2 :UInt64;
  atoms @3 :UInt64;
  worlds @4 :UInt64;
  principals @5 :UInt64;
  uptimeMs @6 :UInt64;
}

struct FleetStatus {
  # What a node knows of the fleet it is in (`Membrane.fleet`), from its own state: it
  # asks NATS nothing to answer. A node running alone answers an empty `name`, its own
  # key, and empty lists.
  name @0 :Text;              # The fleet's name (`engramd --fleet`); empty: alone.
  nodeKey @1 :Data;           # This node's public key (32 bytes).
  address @2 :Text;           # Where this node tells clients to reach it.
  leaseMs @3 :UInt64;         # The fleet's lease (`--fleet-lease-ms`).
  confirmedAgoMs @4 :UInt64;
  # Since this node last confirmed the fleet's policy; a node serves nothing while this
  # is past the lease. The largest UInt64 if it never has.
  nodes @5 :List(FleetNode);  # Every node the fleet's policy records, this one included.
  worlds @6 :List(FleetWorld);
  # The worlds the caller may use (an admin: every world), by name.
}

struct FleetNode {
  key @0 :Data;               # The node's public key.
  address @1 :Text;           # Where it tells clients to reach it.
  slot @2 :UInt32;            # Its commit slot: the commits it gives out are this modulo 1024.
  seenAgoMs @3 :UInt64;
  # Since the node last said, through the fleet, that it runs (every third of the lease);
  # the largest UInt64 when not within the lease (stopped, or cut off from NATS).
  confirmedAgoMs @4 :UInt64;
  # How long ago, when it last said so, it had confirmed the fleet's policy; the largest
  # UInt64 if not known.
}

struct FleetWorld {
  world @0 :Text;
  ownerKey @1 :Data;          # The node that writes the world now; empty: none does.
  ownerAddress @2 :Text;      # Where to send its writes; empty: any node takes it.
  streamPosition @3 :UInt64;  # Messages the world's stream holds, as this node last heard.
  heldPosition @4 :UInt64;    # Of which this node holds the first `heldPosition`.
}

struct WorldCapabilities {
  # What a principal holds in one world. A capability is null where the right is not granted.
  world @0 :Text;
  reader @1 :WorldReader;
  writer @2 :WorldWriter;
  observer @3 :Observer;
}

interface Terminal {
  # The bootstrap capability of every listener. It grants nothing but a login.

  challenge @0 () -> (nonce :Data, nodeKey :Data, epoch :UInt64);
  # Issues a fresh single-use 32-byte nonce, bound to this connection, with the node's
  # public key and the current epoch number to sign (see `loginDomain`).

  login @1 (publicKey :Data, nonce :Data, signature :Data) -> (membrane :Membrane);
  # Exchanges a signed challenge for the principal's membrane. The nonce is consumed
  # whether or not the login succeeds. Fails with `unauthenticated` for an unknown key,
  # a bad signature, an unknown or reused nonce, or a nonce issued in an older epoch.

  restore @2 (token :Data, withoutSave :Bool) -> (world :Text, reader :WorldReader,
                               writer :WorldWriter, observer :Observer, signer :Signer);
  # Exchanges a token (see `tokenFormat`) for the live capability it names: exactly one
  # of reader, writer, observer and signer is set, narrowed by every block of the token;
  # `world` names its world (empty for a signer). Counts as a login attempt against the
  # peer's login rate. Fails with `unauthenticated`, `staleEpoch` or `permissionDenied`
  # as `tokenFormat` says. The capability dies like a grafted one (epoch advance,
  # principal removed or grants changed) and when the token, or one it descends from,
  # is revoked. With `withoutSave`, the capability is narrowed as `Restriction.withoutSave`
  # says: what a parent restores for a child it forwards calls to, so that the child's
  # authority ends with the parent's connection (a child handed off on the Unix socket
  # is narrowed so by the node). The token itself is never shown to the holder.
  #
  # What a restored capability sees is what the token's narrowing lets it see, exactly
  # as an attenuated capability would (see `Restriction`); its rates are shared with
  # every capability of its lineage (see `tokenFormat`).
}

interface Membrane {
  # A logged-in principal's source of capabilities.

  graft @0 () -> (epoch :Epoch, principal :PrincipalInfo, worlds :List(WorldCapabilities),
                  signer :Signer, admin :Admin);
  # Returns the current epoch and fresh capabilities under the policy in force now: one
  # entry per active or archived world the principal may use, a signer, and, for admins
  # only, the admin capability (null otherwise). Capabilities from an earlier graft stop
  # working when the epoch advances; graft again to continue. The answer is one snapshot
  # of the policy: the capabilities it lists work under exactly the grants and epoch it
  # lists, until the next change. A graft that meets a change being applied (committed,
  # not yet in force on this node) waits for it, at most a second, then fails with
  # `unavailable` (graft again); `permissionDenied` if the principal was removed;
  # `unavailable` too while a fleet node has not confirmed the fleet's policy.

  revokeToken @1 (token :Data) -> ();
  # Revokes a token that names this principal (see `tokenFormat`): its last block's
  # revocation id goes on the node's revocation list, so it, every token attenuated
  # from it and every capability restored from them fail from then on (restore with
  # `unauthenticated`, calls with `permissionDenied`); a token it was attenuated from
  # stays good. Returns once durable. Counts as a login attempt against the peer's
  # login rate (opening a token checks its signatures), and holds one of the
  # connection's calls in flight. `unauthenticated` for bytes that are not this
  # node's token; `permissionDenied` for another principal's token. Revoking a stale or
  # already revoked token changes nothing. An epoch advance revokes every token and
  # empties the list; the list holds at most 100,000 tokens per epoch
  # (`resourceExhausted` past it).

  fleet @2 () -> (status :FleetStatus);
  # The fleet this node is in, as this node knows it (see `FleetStatus`): its nodes,
  # whether each runs and has confirmed the fleet's policy, and for each world the
  # principal may use (an admin: every world), its owner (where its writes go) and its
  # stream position against what this node holds. Answered from the node's own state,
  # with no call to NATS. `unavailable` while the node has not confirmed the fleet's
  # policy within its lease, as every call is (ask another node).
}

interface WorldReader {
  # Reads one world, within the restriction it carries.

  world @0 () -> (name :Text);

  get @1 (id :Data, asOf :UInt64) -> (atom :Atom);
  # The atom with this id. `notFound` if it is not in this world or not visible
  # through this capability's restriction, or, with `asOf` (a commit; 0: now), if it was
  # committed after it.

  ask @2 (query :Query) -> (hits :List(Hit), warning :Text, resumeBeforeCommit :UInt64);
  # The atoms matching the filters, answered from indexes: newest first, or with
  # `query.vector` / `query.text` the most relevant first. `warning` is empty unless the
  # answer is not complete or not served entirely by the vector and text indexes (they
  # catch up after writes and restarts): it then says what was compared exactly, what
  # was not searched, or where the answer stopped.
  #
  # Every call has a budget (see "Cost model" at the top of this file). A newest-first ask that reaches
  # it before `limit` hits returns what it found with `resumeBeforeCommit` set: ask
  # again with `query.beforeCommit` = that value for the next page. 0 means the answer
  # is complete. A ranked ask (vector or text) answers within its budget and says in
  # `warning` when that left atoms unsearched.

  replay @3 (fromCommit :UInt64, limit :UInt32) -> (atoms :List(Atom), nextCommit :UInt64);
  # Visible atoms with commit > fromCommit in commit order, at most `limit` (1 to 1000),
  # and fewer when the call's budget is reached first. `nextCommit` is the cursor to
  # pass next time: the last commit the call handled (it may be past the last atom
  # returned); once the world's log is read to its end, the node's last commit.

  heads @4 (asOf :UInt64) -> (heads :List(ChainHead));
  # The head of every writer's chain in this world; with `asOf` (a commit; 0: now), as
  # they stood then: each chain's newest entry committed at or before it, and no chain
  # begun after it. Through a restriction that hides
  # atoms: each writer's newest visible atom instead, and no writer without one (see
  # `Restriction`); `resourceExhausted` if finding them takes more than a call's budget.

  verify @5 () -> (report :VerifyReport);
  # Recomputes every chain of this world and names the first bad entry, if any. In a
  # fleet, when the chains hold, a message of the world's stream that a node of the
  # fleet signed and this node refused is reported too (the entry refused, and the
  # stream position): this node's copy of the world differs from the stream's. Through
  # a restriction that hides atoms, the report speaks only of visible atoms (see
  # `Restriction`): a refused message is reported with no writer (zeros) and seq 0.

  attenuate @6 (restriction :Restriction) -> (reader :WorldReader);
  # A reader narrowed by `restriction`. It can be handed to another process.

  generation @7 () -> (generation :Generation);
  # "Anything new?" in one small call, for a client that polls instead of subscribing:
  # when `lastCommit` is what the previous call said, nothing this reader may see has
  # been written since. Answered from the world's record and one index lookup, never a
  # scan.

  diff @8 (fromCommit :UInt64, toCommit :UInt64, limit :UInt32)
      -> (atoms :List(Atom), nextCommit :UInt64);
  # What changed in this world between two commits: the visible atoms committed after
  # `fromCommit` and at or before `toCommit` (0: now), in commit order, at most `limit`
  # (1 to 1000) and within the call's budget. `nextCommit` is where to continue (pass it
  # as `fromCommit`); it is `toCommit` once everything up to it was read. Lifecycle
  # changes are atoms too (transition atoms, and atoms with `supersedes` links), so
  # these are every state change between the two commits that this reader may see (a
  # restriction that hides the atom making a change hides the change from the list,
  # though not from its target's `state`: see `Restriction`); each atom's `state` is as
  # of `toCommit`.

  check @10 (plan :Text, labels :List(Text)) -> (violations :List(Violation), warning :Text);
  # The pre-flight check: every live constraint (asserted or approved: not proposed,
  # rejected, deprecated, superseded or retracted) of this world, visible through this
  # reader's restriction, that the plan violates, oldest first; none when it violates
  # nothing. A constraint is in scope when it has no labels, when `labels` is empty, or
  # when they share a label. Matching is deterministic word matching (see
  # `AtomContent.forbids`), never a model. Candidates come from an index of the
  # constraints' forbidden words, one lookup per distinct word of the plan (at most 64
  # KiB of text). The call's budget (see "Cost model") counts each word looked up and
  # each constraint found, and the answer's bytes; past it, the answer is what was found
  # and `warning` says so.

  commitAt @11 (unixMs :Int64) -> (commit :UInt64);
  # The last commit of this world the node recorded at or before this time (0 if none):
  # the `asOf` a time names ("what did we believe on 3 March"). Found by bisection over
  # the world's commits, never a scan. Recording times are the node's clock; if it
  # stepped back, the answer is a commit recorded at or before the time, not
  # necessarily the last. `permissionDenied` through a restriction that hides atoms:
  # bisected by time, its answers would find the commits of atoms it may not see (their
  # count and times); such a reader takes `asOf` from the commits its answers carry.

  trust @9 (writer :Data, label :Text) -> (trust :Trust);
  # The writer's trust in this world on atoms carrying `label` (empty: on all its
  # atoms). One index lookup. `permissionDenied` through a restriction that hides
  # atoms, since trust counts links from atoms it may not see.

  save @12 () -> (token :Data);
  # This capability as a token (see `tokenFormat`), for `Terminal.restore`: exactly as
  # narrow as the capability (its restriction as narrowing facts, its rate lineage, the
  # tokens it descends from), so whoever restores it sees and may do no more than this
  # holder. `permissionDenied` if the capability was narrowed `withoutSave` (as one
  # handed to a spawned child is): its authority ends with its connection.
}

interface WorldWriter {
  # Writes one world as the principal that grafted it, within its restriction.

  remember @0 (atom :AtomContent, idempotencyKey :Data) -> (receipt :Receipt, replayed :Bool);
  # Appends one atom to the writer's chain. Returns only once it is durable.
  #
  # `idempotencyKey` (optional, 1 to 64 bytes chosen by the client; empty = none) makes
  # the call safe to retry after an answer was lost (`internal`, `unavailable`, a broken
  # connection): a request with a key this principal already used in this world within
  # the last 24 hours writes nothing and answers the first request's receipt, with
  # `replayed` true. The same key with different atoms is `conflict`. Keys are the
  # principal's, across all its capabilities and connections; pick a new random key per
  # request (16 random bytes do) and reuse it only to retry that request.
  #
  # A failure says whether anything was written: "nothing was written" only when
  # nothing was; `unavailable` with "may have been written" when the node cannot tell
  # (in a fleet, the world's stream took the entries but its answer was lost): the atoms
  # may appear later, and only a retry with the same key is safe.

  rememberBatch @1 (atoms :List(AtomContent), idempotencyKey :Data)
      -> (receipts :List(Receipt), replayed :Bool);
  # Appends up to 10,000 atoms, all or nothing, in order, making at most 10,000
  # lifecycle transitions (`supersedes` links and transition atoms) in all. Returns once
  # durable. `idempotencyKey` and `replayed` as for `remember`: a retried batch answers
  # all its receipts, and writes none of its atoms twice.

  attenuate @2 (restriction :Restriction) -> (writer :WorldWriter);
  # A writer narrowed by `restriction`. It can be handed to another process.

  transition @3 (target :Data, kind :TransitionKind, reason :Text) -> (receipt :Receipt);
  # Moves the atom `target` of this world to its next lifecycle state (see
  # `LifecycleState`) by appending a transition atom to the writer's chain, with
  # `reason` as its text (empty: the transition's name); the state index changes in
  # the same transaction. Returns the transition atom's receipt once durable.
  # `notFound` if the target is not in this world or not visible through this
  # capability's restriction (an atom of another world is not found either, whether or not
  # it exists); `conflict` if it is a transition,
  # or its state does not allow the transition; `permissionDenied` without the right
  # (approve, reject and deprecate need the approve right; retract, being the
  # target's writer).

  save @4 () -> (token :Data);
  # This capability as a token (see `tokenFormat`), for `Terminal.restore`: exactly as
  # narrow as the capability (its restriction as narrowing facts, its rate lineage, the
  # tokens it descends from), so whoever restores it sees and may do no more than this
  # holder. `permissionDenied` if the capability was narrowed `withoutSave` (as one
  # handed to a spawned child is): its authority ends with its connection.
}

interface AtomSink {
  # Implemented by a subscriber to receive atoms pushed by an `Observer`.

  push @0 (atoms :List(Atom)) -> stream;
  # Committed atoms, in commit order, each exactly once per subscription; the last
  # atom's commit is the cursor to resume from. A streaming call: the node sends the
  # next push only while Cap'n Proto's flow-control window has room, so a sink that
  # returns slowly slows its own subscription and nothing else. Failing a push ends
  # the subscription.

  end @1 (reason :Text) -> ();
  # The node ended the subscription; `reason` starts with a stable code: `staleEpoch`
  # (graft again and resume from the cursor), `permissionDenied` (the principal was
  # removed or its grants changed), `unavailable` (the node is shutting down).
}

interface Subscription {
  # Handle of a live subscription. Dropping it ends the subscription.

  cancel @0 () -> ();
  # Ends the subscription; returns once no further push will come.
}

interface Observer {
  # Watches one world, within the restriction it carries.

  subscribe @0 (filter :Query, sink :AtomSink, fromCommit :UInt64) -> (subscription :Subscription);
  # Pushes to `sink` every visible atom with commit > fromCommit that matches `filter`
  # (kinds, labels, writers, importance; `limit`, `beforeCommit` and `explain` do not
  # apply, and a `vector` is `invalidArgument`): first what is already stored, then each
  # new commit as it becomes durable, with no gap and no duplicate. Resume after any interruption by subscribing again from the last
  # commit received. `resourceExhausted` past the node's subscriptions per principal.

  attenuate @1 (restriction :Restriction) -> (observer :Observer);
  # An observer narrowed by `restriction`.

  save @2 () -> (token :Data);
  # This capability as a token (see `tokenFormat`), for `Terminal.restore`: exactly as
  # narrow as the capability (its restriction as narrowing facts, its rate lineage, the
  # tokens it descends from), so whoever restores it sees and may do no more than this
  # holder. `permissionDenied` if the capability was narrowed `withoutSave` (as one
  # handed to a spawned child is): its authority ends with its connection.
}

interface Signer {
  # Signs on behalf of the principal with a key derived inside the node; it never leaves.

  publicKey @0 () -> (key :Data);
  # The 32-byte ed25519 public key that verifies this principal's signatures.

  sign @1 (domain :Text, message :Data) -> (signature :Data);
  # Signs `message` under `domain` (see `signDomain` for the exact bytes). `domain` is
  # 1 to 128 bytes; `message` at most 1 MiB. `permissionDenied` outside the allowed domains.

  attenuate @2 (domains :List(Text)) -> (signer :Signer);
  # A signer limited to these domains (intersected with the holder's).

  save @3 () -> (token :Data);
  # This capability as a token (see `tokenFormat`), for `Terminal.restore`: exactly as
  # narrow as the capability (its restriction as narrowing facts, its rate lineage, the
  # tokens it descends from), so whoever restores it sees and may do no more than this
  # holder. `permissionDenied` if the capability was narrowed `withoutSave` (as one
  # handed to a spawned child is): its authority ends with its connection.
}

interface Admin {
  # Operator capability: worlds, principals and the epoch. Held by admin principals.

  createWorld @0 (name :Text, vectorDimension :UInt32) -> (world :WorldInfo);
  # `conflict` if it exists; `invalidArgument` for a malformed name or a dimension over
  # 4096. With `vectorDimension` (1 to 4096), every vector written to the world must
  # have exactly that many components, the first one included; with 0, the world's
  # first vector fixes it, so any writer, however attenuated, could choose it: set it
  # here for worlds that hold vectors.

  archiveWorld @1 (name :Text) -> (world :WorldInfo);
  resumeWorld @2 (name :Text) -> (world :WorldInfo);
  listWorlds @3 () -> (worlds :List(WorldInfo));

  addPrincipal @4 (name :Text, publicKey :Data, admin :Bool, grants :List(Grant))
      -> (principal :PrincipalInfo);
  # `conflict` if the name or key is taken; `notFound` if a granted world does not exist.

  setGrants @5 (name :Text, grants :List(Grant)) -> (principal :PrincipalInfo);
  # Replaces the principal's grants. Its live capabilities stop working at once. The
  # change falls between two write transactions: every write committed before it was
  # checked against the old grants, and every one after against the new, inside its
  # transaction (one they refuse is `permissionDenied` and wrote nothing).

  removePrincipal @6 (name :Text) -> ();
  # Removes the principal. Its live capabilities fail with `permissionDenied` at once,
  # and its tokens and open logins are refused for as long as its key stays removed:
  # adding the same key again (under any name) lets them work again, under the new
  # grants. To end them for good, advance the epoch (or revoke the tokens) too.

  listPrincipals @7 () -> (principals :List(PrincipalInfo));

  currentEpoch @8 () -> (epoch :Epoch);

  advanceEpoch @9 (head :Data) -> (epoch :Epoch);
  # Moves to the next epoch with this 32-byte head. Returns only once it is durable and
  # every capability of an older epoch fails with `staleEpoch`. The advance falls
  # between two write transactions: every atom acknowledged under the old epoch has a
  # lower commit than every atom written under the new one, and a write of the old
  # epoch that reaches the writer after the advance is `staleEpoch` and wrote nothing.
  # A receipt from a capability of epoch N is proof that its write came before N+1.

  health @10 () -> (health :Health);

  audit @11 (principal :Text, fromCommit :UInt64, toCommit :UInt64, afterSequence :UInt64,
             limit :UInt32) -> (records :List(AuditRecord));
  # The audit trail of one principal (its name, or its public key as 64 hex digits, for
  # a principal since removed): every `ask`, `check`, `get`, `replay` and `diff` it made
  # that answered, and every push of its subscriptions (method `subscribe`), with the commit its answer stood at in `fromCommit..=toCommit` (0 as
  # `toCommit`: no bound), in commit order, at most `limit` (1 to 1000). To page on, pass
  # the last record's `commit` as `fromCommit` and its `sequence` as `afterSequence`.
  # "What did this agent receive when it asked at commit N": fromCommit = toCommit = N.
  # A read's record is queued before the read is answered and is in the trail within
  # 50 ms; a crash loses at most the records of reads answered in the 50 ms before it
  # (README, Audit trail). A read fails with `unavailable` rather than go unrecorded.

  revokeToken @12 (token :Data) -> ();
  # Revokes any principal's token, as `Membrane.revokeToken` does its own.

  backup @13 () -> (backup :Backup);
  # A consistent copy of the node's state as it stands now, made while the node goes on
  # serving writes: the store, copied table by table from one read snapshot into a
  # fresh redb file (`engram.redb`), and the audit trail (`audit.redb`), on the node's
  # disk until the `Backup` is released. Its manifest says what it holds. One backup at
  # a time on a node (`resourceExhausted` while another is held). Neither the node key
  # nor the derived indexes are part of it: a restored node makes its own key (so it
  # cannot impersonate the one backed up) and rebuilds its indexes.
  # `engramd restore --from DIR --data DIR` restores a backup a client wrote to DIR.
}

interface Backup {
  # A backup made by `Admin.backup`, read by its holder file by file. Released (its
  # files deleted from the node's disk) when the holder drops it or disconnects.

  manifest @0 () -> (manifest :Text);
  # JSON: `format` (1), `createdAtUnixMs`, `lastCommit`, `epoch`, `worlds` (each with
  # `name`, `state`, `atoms` and `heads`: each writer's `writer`, `seq` and `id` in hex),
  # and `files` (each with `name`, `bytes` and `blake3` in hex). A client writes it as
  # `manifest.json` beside the files, last, once every file matches it.

  read @1 (file :Text, offset :UInt64, length :UInt32) -> (data :Data);
  # Up to `length` bytes (1 to 4 MiB) of the manifest's file `file` from `offset`;
  # fewer only at the file's end (none past it). `notFound` for a file the manifest
  # does not name.
}
