//! Every limit the store enforces, in one place. Going past one is an error
//! (`StoreError::InvalidAtom` and friends), never a silent truncation.

/// Bytes of an atom's text (UTF-8).
pub const ATOM_TEXT_BYTES_MAX: usize = 64 * 1024;
/// Bytes of an atom's opaque payload.
pub const ATOM_PAYLOAD_BYTES_MAX: usize = 1024 * 1024;
/// Labels on one atom.
pub const ATOM_LABELS_MAX: usize = 64;
/// Bytes of one label.
pub const LABEL_BYTES_MAX: usize = 128;
/// Links from one atom.
pub const ATOM_LINKS_MAX: usize = 64;
/// Components of an atom's vector.
pub const ATOM_VECTOR_DIMENSIONS_MAX: usize = 4096;
/// Atoms in one `remember` batch.
pub const BATCH_ATOMS_MAX: usize = 10_000;
/// Bytes of a `remember` request's idempotency key.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 64;
/// How long a request's idempotency key is kept after its write: a retry with the key
/// within this window answers the original receipts; after it, the key is free again.
pub const IDEMPOTENCY_WINDOW_MS: i64 = 24 * 60 * 60 * 1000;
/// Bytes of a world name.
pub const WORLD_NAME_BYTES_MAX: usize = 128;
/// Bytes of a principal name.
pub const PRINCIPAL_NAME_BYTES_MAX: usize = 64;
/// Worlds one principal may hold grants in.
pub const PRINCIPAL_GRANTS_MAX: usize = 1024;
/// Hits of one `ask`.
pub const ASK_LIMIT_MAX: u32 = 1000;
/// Labels, kinds or writers in one query filter.
pub const QUERY_FILTER_VALUES_MAX: usize = 64;
/// Atoms returned by one `replay` call.
pub const REPLAY_LIMIT_MAX: u32 = 1000;
/// Entries one `ask` or `replay` call examines before it answers with what it found
/// and a cursor to continue from, so that no filter or restriction makes one call scan
/// a whole world.
pub const READ_EXAMINED_MAX: usize = 10_000;
/// Entries a read examines on the RPC thread: one that needs more starts again off it,
/// on the blocking pool, so it never holds up other connections.
pub const READ_INLINE_EXAMINED_MAX: usize = 256;
/// Bytes of atoms in one answer (`ask`, `replay`, one subscription push), counted by
/// `Atom::answer_bytes`; past it the answer is partial with a cursor. An answer always
/// holds at least one atom, so the largest atom still fits.
pub const ANSWER_BYTES_MAX: usize = 8 * 1024 * 1024;
/// What one search examines at most: the text index's matching documents, and the atoms
/// newer than an index compared outside it. Past it the answer is partial and says so.
pub const SEARCH_EXAMINED_MAX: usize = 10_000;
/// Distinct words in one text query.
pub const TEXT_QUERY_WORDS_MAX: usize = 64;
/// Write requests queued for the writer thread before submitters wait.
pub const WRITE_QUEUE_REQUESTS_MAX: usize = 4096;
/// Write requests folded into one durable transaction (group commit).
pub const GROUP_COMMIT_REQUESTS_MAX: usize = 1024;
/// Atoms folded into one durable transaction: a group closes early past it.
pub const GROUP_COMMIT_ATOMS_MAX: usize = 50_000;

/// Default bytes of redb's page cache (`engramd --cache-mib`).
pub const CACHE_BYTES_DEFAULT: usize = 256 * 1024 * 1024;

const _: () = assert!(GROUP_COMMIT_ATOMS_MAX >= BATCH_ATOMS_MAX);
const _: () = assert!(GROUP_COMMIT_REQUESTS_MAX <= WRITE_QUEUE_REQUESTS_MAX);
const _: () = assert!(READ_EXAMINED_MAX >= REPLAY_LIMIT_MAX as usize);
const _: () = assert!(READ_INLINE_EXAMINED_MAX <= READ_EXAMINED_MAX);
const _: () = assert!(LABEL_BYTES_MAX <= ATOM_TEXT_BYTES_MAX);
/// Live contradictions an ask lists for one hit (`Hit.contradictions`).
pub const CONTRADICTIONS_LISTED_MAX: usize = 16;
/// Links a hit's contradictions are looked for among, its own and those made to it.
pub const CONTRADICTIONS_EXAMINED_MAX: usize = 128;
/// Terms a constraint may forbid.
pub const ATOM_FORBIDS_MAX: usize = 64;
/// Bytes of one forbidden term.
pub const FORBIDDEN_TERM_BYTES_MAX: usize = 128;
/// Words of one forbidden term (a phrase).
pub const FORBIDDEN_TERM_WORDS_MAX: usize = 16;
/// Labels a plan may be checked under.
pub const CHECK_LABELS_MAX: usize = 64;
/// Labels of an atom whose trust a ranked ask weighs, and that a confirmation or a
/// correction of it counts on (the first ones).
pub const TRUST_LABELS_MAX: usize = 8;
/// Lifecycle transitions one write request may make (transition atoms and `supersedes`
/// links, across its batch): each is checked against its target.
pub const TRANSITIONS_PER_REQUEST_MAX: usize = 10_000;

/// Tokens one epoch's revocation list holds; past it, revoking fails with
/// `resourceExhausted` until an epoch advance empties the list (and revokes every token).
pub const REVOKED_TOKENS_PER_EPOCH_MAX: u64 = 100_000;
