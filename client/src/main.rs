//! `engram`: the command-line client of an engram node. `engram --help` lists commands.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use engram_client::engram_schema::engram_capnp::{LifecycleState, TransitionKind};
use engram_client::engram_schema::engram_capnp::{observer, signer, world_reader, world_writer};
use engram_client::spawn::Held;
use engram_client::token::Narrowing;
use engram_client::{
    ClientError, Endpoint, ErrorCode, Filter, Grant, IdempotencyKey, NewAtom, NodeTrust, Session,
    WatchEvent, connect, keyfile, kind_from_name, kind_name, state_from_name, state_name,
};
use serde_json::{Value, json};

/// Command-line client of an engram node.
///
/// Exit codes: 0 success; 1 the node refused the request (the message starts with its
/// error code); 2 bad usage; 3 cannot connect or log in; 4 `verify` found a bad entry;
/// 5 `check` found the plan violates a constraint.
#[derive(Parser, Debug)]
#[command(name = "engram", version)]
struct Cli {
    /// Node to talk to: HOST:PORT, tls://HOST:PORT for TLS (a node started with --tls),
    /// or unix:PATH for a Unix socket.
    #[arg(
        long,
        global = true,
        env = "ENGRAM_NODE",
        default_value = "127.0.0.1:7420"
    )]
    node: String,
    /// Over TLS, accept only the node with this key (64 hex digits: the node_key= of
    /// its ready line). Implies TLS for a HOST:PORT node.
    #[arg(long, global = true, env = "ENGRAM_NODE_KEY", value_name = "HEX")]
    node_key: Option<String>,
    /// Over TLS without --node-key, the file of known node keys: a node's key is
    /// recorded the first time and required after [default: ENGRAM_KNOWN_NODES, or
    /// ~/.config/engram/known_nodes].
    #[arg(long, global = true, value_name = "PATH")]
    known_nodes: Option<PathBuf>,
    /// Key file of the principal to log in as.
    #[arg(
        long,
        global = true,
        env = "ENGRAM_KEY",
        default_value = "./engram-data/admin.key"
    )]
    key: PathBuf,
    /// Act through the capability this token file holds (see `engram token save`)
    /// instead of logging in with --key.
    #[arg(long, global = true, env = "ENGRAM_TOKEN")]
    token: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write a new key file (mode 0600) and print its public key.
    Keygen { path: PathBuf },
    /// Show who the key logs in as, the epoch, and the worlds it holds.
    Whoami,
    /// Manage worlds (admin).
    #[command(subcommand)]
    World(WorldCommand),
    /// Manage principals (admin).
    #[command(subcommand)]
    Principal(PrincipalCommand),
    /// Remember an atom (TEXT), or a batch of JSON lines from --batch.
    Remember(RememberArguments),
    /// Remember an atom as a proposal: not current knowledge until someone with the
    /// approve right approves it.
    Propose(ProposeArguments),
    /// Remember an atom that replaces an older one (OLD, an id), which leaves current
    /// knowledge as superseded. Another writer's atom takes the approve right.
    Supersede(SupersedeArguments),
    /// Approve a proposed or asserted atom (needs the approve right).
    Approve(TransitionArguments),
    /// Reject a proposal (needs the approve right).
    Reject(TransitionArguments),
    /// Deprecate an asserted or approved atom (needs the approve right).
    Deprecate(TransitionArguments),
    /// Retract one of your own atoms.
    Retract(TransitionArguments),
    /// Print one atom by id.
    Get {
        world: String,
        id: String,
        /// As the world stood at this commit, or at this RFC 3339 time (the last commit
        /// recorded by then): not found if committed after it.
        #[arg(long)]
        as_of: Option<String>,
    },
    /// Ask for atoms by kind, label, writer and importance, newest first.
    Ask(AskArguments),
    /// Print atoms in commit order after a cursor.
    Replay {
        world: String,
        /// Print atoms with a commit after this one.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// At most this many atoms (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Print what changed in a world between two commits, in commit order.
    Diff {
        world: String,
        /// Changes after this commit.
        #[arg(long)]
        from: u64,
        /// Changes at or before this commit (0: now).
        #[arg(long, default_value_t = 0)]
        to: u64,
        /// At most this many atoms (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Print atoms as they are committed (after --from), until interrupted or ended by
    /// the node; with --json one JSON object per line.
    Watch(WatchArguments),
    /// Print the head of every writer's chain in a world.
    Heads {
        world: String,
        /// As the chains stood at this commit, or at this RFC 3339 time.
        #[arg(long)]
        as_of: Option<String>,
    },
    /// Check a plan against the world's constraints before acting on it: print every
    /// live constraint it violates, who stated it, when, and the words that matched;
    /// exit 5 if it violates any.
    Check {
        world: String,
        /// The plan's text (- reads it from stdin).
        plan: String,
        /// Check it under these labels (constraints with none of them are out of
        /// scope; without any, every constraint is in scope); repeatable.
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Print a writer's trust in a world: what other principals' confirms and corrects
    /// links said of its atoms.
    Trust {
        world: String,
        /// The writer's public key (hex).
        writer: String,
        /// On atoms carrying this label; without it, on all the writer's atoms.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Print where a world stands: the commit of its newest atom (unchanged means
    /// nothing new), its atoms, and the node's last commit.
    Generation { world: String },
    /// Recompute every chain of a world; exit 4 naming the first bad entry.
    Verify { world: String },
    /// Back the node up into DEST, a new directory (admin): a consistent copy of its
    /// state made while it goes on serving, every file checked against the manifest,
    /// which is written last. `engramd restore --from DEST --data DIR` restores it.
    Backup { destination: PathBuf },
    /// Write every atom of a world, in commit order, as JSON lines (one atom a line,
    /// every field, with its id, writer, seq and prev), to FILE or stdout.
    Export {
        world: String,
        /// Write to this file instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Write the atoms of an export (FILE, or stdin) into WORLD as this principal, each
    /// with a derivedFrom link to its original id, in batches. Each writer's chain in
    /// the file is checked first. Run again after an interruption, it writes only what
    /// is missing (within the node's 24-hour idempotency window).
    Import {
        world: String,
        /// The export to read [default: stdin].
        file: Option<PathBuf>,
        /// Atoms a batch (1 to 10,000).
        #[arg(long, default_value_t = 500)]
        batch: usize,
    },
    /// Print the audit trail of a principal (admin): every ask, check, get, replay and
    /// diff it made and every push of its subscriptions, with what it asked, the ids it
    /// received and the commit its answer stood at. `--from N --to N`: what it received when it asked at commit N.
    Audit {
        /// The principal's name, or its public key (hex) if it has been removed.
        principal: String,
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// 0: no bound.
        #[arg(long, default_value_t = 0)]
        to: u64,
        /// Skip the records of --from up to this sequence (to page on: pass the last
        /// record's commit as --from and its sequence here).
        #[arg(long, default_value_t = 0)]
        after_sequence: u64,
        /// At most this many records (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Start COMMAND with one capability and nothing else: this process logs in, grafts
    /// the capability, narrows it, and the child is served it on its descriptor 3
    /// (`ENGRAM_FD`; `ENGRAM_CAPABILITY` and `ENGRAM_WORLD` say what it is). The child
    /// needs no key and no network. With --node unix:PATH the node serves the child
    /// itself (this process hands it the connection); over TCP the child's calls go
    /// through this process. Either way the child's connection ends with this process,
    /// which exits with the child's exit code.
    Spawn(SpawnArguments),
    /// Serve one world's capabilities to an MCP host (Claude Desktop, IDE agents, agent
    /// frameworks) as tools and resources, over stdio (what hosts launch) or streamable
    /// HTTP (--http). The bridge holds the --reader, --writer and --observer of one
    /// world, narrowed by the options (or what --token restores), and nothing more.
    Mcp(McpArguments),
    /// Save capabilities as tokens, narrow them offline, show and revoke them. A token
    /// restores its capability on any connection without a key (`engram --token FILE`).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Show the fleet the node is in, as it knows it: its nodes (running, confirmed),
    /// and each world you may use with its owner (where its writes go) and how far its
    /// stream is against what this node holds.
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// Show or advance the epoch (admin).
    #[command(subcommand)]
    Epoch(EpochCommand),
}

#[derive(Subcommand, Debug)]
enum WorldCommand {
    Create {
        name: String,
        /// Components every vector in the world must have (1 to 4096); without it, the
        /// world's first vector fixes it.
        #[arg(long, default_value_t = 0)]
        vector_dimension: u32,
    },
    Archive {
        name: String,
    },
    Resume {
        name: String,
    },
    List,
}

#[derive(Subcommand, Debug)]
enum PrincipalCommand {
    /// Add a principal with its public key (hex) and grants.
    Add {
        name: String,
        /// The principal's ed25519 public key, 64 hex digits (see `engram keygen`).
        #[arg(long)]
        public_key: String,
        /// Make it an admin.
        #[arg(long)]
        admin: bool,
        /// WORLD=RIGHTS[@CALLS[/ATOMS]]: rights from r (read), w (write), o (observe),
        /// a (approve, reject, deprecate, supersede others' atoms), and an optional rate in calls and atoms a second (0: no limit), e.g.
        /// team/auth=rw@10/500; repeatable.
        #[arg(long = "grant")]
        grants: Vec<String>,
    },
    /// Replace a principal's grants (revokes its live capabilities).
    Grants {
        name: String,
        /// As for `principal add`.
        #[arg(long = "grant")]
        grants: Vec<String>,
    },
    /// Remove a principal (revokes its live capabilities).
    Remove {
        name: String,
    },
    List,
}

#[derive(Subcommand, Debug)]
enum FleetCommand {
    /// Print the fleet's status as this node knows it.
    Status,
}

#[derive(Subcommand, Debug)]
enum EpochCommand {
    Show,
    /// Advance to the next epoch; every older capability stops working.
    Advance {
        /// 32-byte head as 64 hex digits (e.g. a policy hash); zeros if omitted.
        #[arg(long)]
        head: Option<String>,
    },
}

#[derive(Args, Debug)]
struct RememberArguments {
    world: String,
    /// The atom's text.
    #[arg(required_unless_present = "batch", conflicts_with = "batch")]
    text: Option<String>,
    #[command(flatten)]
    atom: AtomOptions,
    /// Write it as a proposal (see `engram propose`).
    #[arg(long)]
    proposed: bool,
    /// A file of JSON lines ({"text": ..., "kind": ..., "labels": [...], "importance": ...,
    /// "vector": [...], "validFrom": ..., "validUntil": ..., "proposed": true,
    /// "supersedes": [ID, ...], "forbids": [TERM, ...]}), or - for stdin; remembered as one
    /// all-or-nothing batch.
    #[arg(long, conflicts_with_all = ["proposed", "valid_from"])]
    batch: Option<PathBuf>,
    #[command(flatten)]
    retry: RetryOptions,
}

/// How a write is retried when its answer is lost.
#[derive(Args, Debug)]
struct RetryOptions {
    /// The request's idempotency key, 1 to 64 bytes of text (default: 16 random bytes as
    /// 32 hex digits, printed if the command fails).
    /// Run the command again with the same key within 24 hours and the node answers the
    /// first run's receipts instead of writing again.
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
    /// Attempts in all when the answer is lost (the connection broke, the node failed or
    /// is restarting): each retry connects again and sends the same key, so the atoms
    /// are written once.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10))]
    attempts: u32,
}

impl RetryOptions {
    fn key(&self) -> Result<IdempotencyKey, ClientError> {
        match &self.idempotency_key {
            Some(key) => IdempotencyKey::new(key.as_bytes()),
            None => IdempotencyKey::random(),
        }
    }
}

#[derive(Args, Debug)]
struct ProposeArguments {
    world: String,
    /// The proposal's text.
    text: String,
    #[command(flatten)]
    atom: AtomOptions,
    #[command(flatten)]
    retry: RetryOptions,
}

#[derive(Args, Debug)]
struct SupersedeArguments {
    world: String,
    /// The id of the atom it replaces.
    old: String,
    /// The new atom's text.
    text: String,
    #[command(flatten)]
    atom: AtomOptions,
    #[command(flatten)]
    retry: RetryOptions,
}

#[derive(Args, Debug)]
struct SpawnArguments {
    #[command(flatten)]
    held: HeldOptions,
    #[command(flatten)]
    narrow: NarrowOptions,
    /// Over TCP: bytes of answers the child may leave unread; past it, its calls are not
    /// read until it reads its answers. (Handed to the node, the node's limits apply.)
    #[arg(long, default_value_t = engram_client::spawn::CHILD_UNREAD_BYTES_MAX_DEFAULT)]
    unread_bytes_max: usize,
    /// Over TCP: milliseconds the child may read none of its waiting answers before it
    /// is cut off.
    #[arg(long, default_value_t = engram_client::spawn::CHILD_STALL_TIMEOUT_DEFAULT.as_millis() as u64)]
    stall_timeout_ms: u64,
    /// The child's command and arguments, after --.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Args, Debug)]
struct McpArguments {
    /// Hold this world's reader: the ask, get, replay, check and diff tools, and the
    /// world as a resource.
    #[arg(long)]
    reader: Option<String>,
    /// Hold this world's writer: the remember, remember_batch and propose tools.
    #[arg(long)]
    writer: Option<String>,
    /// Hold this world's observer: subscriptions to the world's resource (with
    /// --reader).
    #[arg(long)]
    observer: Option<String>,
    #[command(flatten)]
    narrow: NarrowOptions,
    /// Serve streamable HTTP at http://ADDRESS/mcp (a loopback HOST:PORT; port 0 picks
    /// one, printed on standard error) instead of stdio.
    #[arg(long)]
    http: Option<String>,
}

/// Which capability: one world's reader, writer or observer, or the signer.
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("held").required(true).args(["reader", "writer", "observer", "signer"])))]
struct HeldOptions {
    /// This world's reader.
    #[arg(long)]
    reader: Option<String>,
    /// This world's writer.
    #[arg(long)]
    writer: Option<String>,
    /// This world's observer.
    #[arg(long)]
    observer: Option<String>,
    /// The principal's signer.
    #[arg(long)]
    signer: bool,
}

/// How to narrow a capability or a token; each option narrows, none widens.
#[derive(Args, Debug, Clone, Default)]
struct NarrowOptions {
    /// The options below in one: comma-separated KEY=VALUE, e.g.
    /// `labels=public,kinds=fact,max-importance=0.5`; keys label(s), kind(s),
    /// max-importance, without-approve, expires, rate, domain(s); a list key may repeat.
    #[arg(long)]
    restrict: Vec<String>,
    /// Only atoms with one of these labels (writers: every atom labelled from them);
    /// repeatable.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Only these kinds; repeatable.
    #[arg(long = "kind")]
    kinds: Vec<String>,
    /// Only atoms of at most this importance.
    #[arg(long)]
    max_importance: Option<f32>,
    /// Take away the approve right (a writer that may only propose).
    #[arg(long)]
    without_approve: bool,
    /// Take away save: the capability cannot be saved as a token again (its authority
    /// ends with the connection it is handed on).
    #[arg(long)]
    without_save: bool,
    /// Every call fails from this time on: an RFC 3339 time or unix milliseconds.
    #[arg(long)]
    expires: Option<String>,
    /// At most CALLS[/ATOMS] per second (0: no limit on that one).
    #[arg(long)]
    rate: Option<String>,
    /// A signer signs only in these domains; repeatable.
    #[arg(long = "domain")]
    domains: Vec<String>,
}

impl NarrowOptions {
    /// These options with every --restrict spelled out as the option it names.
    fn resolved(&self) -> Result<NarrowOptions, Failure> {
        let mut resolved = NarrowOptions {
            restrict: Vec::new(),
            ..self.clone()
        };
        let pairs = self
            .restrict
            .iter()
            .flat_map(|spec| spec.split(','))
            .filter(|pair| !pair.is_empty());
        for pair in pairs {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let once = |option: &mut Option<String>, name: &str| {
                if option.replace(value.to_owned()).is_some() {
                    return Err(usage(format!("--restrict sets {name} twice")));
                }
                Ok(())
            };
            match key.trim() {
                "label" | "labels" => resolved.labels.push(value.to_owned()),
                "kind" | "kinds" => resolved.kinds.push(value.to_owned()),
                "domain" | "domains" => resolved.domains.push(value.to_owned()),
                "max-importance" => {
                    let max = value.parse().map_err(|_| {
                        usage(format!("--restrict max-importance={value}: not a number"))
                    })?;
                    if resolved.max_importance.replace(max).is_some() {
                        return Err(usage("--restrict sets max-importance twice"));
                    }
                }
                "without-approve" if matches!(value, "" | "true") => {
                    resolved.without_approve = true
                }
                "without-save" if matches!(value, "" | "true") => resolved.without_save = true,
                "expires" => once(&mut resolved.expires, "expires")?,
                "rate" => once(&mut resolved.rate, "rate")?,
                other => {
                    return Err(usage(format!(
                        "--restrict {pair:?}: {other:?} is not label, kind, max-importance, \
                         without-approve, without-save, expires, rate or domain"
                    )));
                }
            }
        }
        Ok(resolved)
    }

    /// These options as a restriction (the rate parsed as in a grant).
    fn restriction(&self) -> Result<engram_client::Restriction, Failure> {
        let mut restriction = engram_client::Restriction {
            labels: self.labels.clone(),
            without_approve: self.without_approve,
            without_save: self.without_save,
            ..engram_client::Restriction::default()
        };
        for kind in &self.kinds {
            restriction.kinds.push(kind_from_name(kind)?);
        }
        if let Some(max) = self.max_importance {
            restriction.max_importance = max;
        }
        if let Some(expires) = &self.expires {
            restriction.expires_at_unix_ms = parse_instant(expires, "--expires")?;
        }
        if let Some(rate) = &self.rate {
            restriction.rate = engram_client::Rate::parse(rate)?;
        }
        Ok(restriction)
    }

    /// These options as a token block's narrowing.
    fn narrowing(&self) -> Result<Narrowing, Failure> {
        let restriction = self.restriction()?;
        let set =
            |values: &[String]| (!values.is_empty()).then(|| values.iter().cloned().collect());
        Ok(Narrowing {
            kinds: set(&self.kinds),
            labels: set(&self.labels),
            max_importance_millionths: self
                .max_importance
                .map(|max| (f64::from(max.clamp(0.0, 1.0)) * 1e6).floor() as u32),
            expires_unix_s: self
                .expires
                .is_some()
                .then(|| restriction.expires_at_unix_ms.max(0) as u64 / 1000),
            rate: self.rate.is_some().then_some((
                restriction.rate.calls_per_second,
                restriction.rate.atoms_per_second,
            )),
            without_approve: self.without_approve,
            without_save: self.without_save,
            domains: set(&self.domains),
        })
    }
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Save a capability, narrowed by the options, as a token: printed, or written to
    /// --output (mode 0600). Anyone holding it holds the capability until the epoch
    /// advances or it is revoked.
    Save {
        #[command(flatten)]
        held: HeldOptions,
        #[command(flatten)]
        narrow: NarrowOptions,
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Narrow a token file offline, without a node or a key: append a block stating
    /// the options. Prints the new token, or writes it to --output.
    Attenuate {
        file: PathBuf,
        #[command(flatten)]
        narrow: NarrowOptions,
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Print each block of a token file as its facts, one a line: what the node
    /// granted, then each narrowing (strings quoted and escaped, as typed terms).
    Show { file: PathBuf },
    /// Revoke a token file: it, every token narrowed from it, and every capability
    /// restored from them stop working. Your own tokens, or any as an admin.
    Revoke { file: PathBuf },
}

#[derive(Args, Debug)]
struct TransitionArguments {
    world: String,
    /// The id of the atom to act on.
    id: String,
    /// Why (the transition atom's text); default: the transition's name.
    #[arg(long, default_value = "")]
    reason: String,
}

/// What a new atom is, besides its text.
#[derive(Args, Debug)]
struct AtomOptions {
    #[arg(long, default_value = "observation")]
    kind: String,
    /// Repeatable.
    #[arg(long = "label")]
    labels: Vec<String>,
    #[arg(long, default_value_t = 0.5)]
    importance: f32,
    #[arg(long, default_value_t = 1.0)]
    confidence: f32,
    /// An embedding: comma-separated numbers; the world's first fixes its dimension.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    vector: Vec<f32>,
    /// When the atom starts to hold in the world: an RFC 3339 time
    /// (2026-03-03T00:00:00Z) or unix milliseconds.
    #[arg(long)]
    valid_from: Option<String>,
    /// When it stops holding (excluded), as --valid-from; without it, open-ended.
    #[arg(long, requires = "valid_from")]
    valid_until: Option<String>,
    /// A word or phrase a plan must not contain (constraints only, with --kind
    /// constraint); repeatable.
    #[arg(long = "forbid")]
    forbids: Vec<String>,
}

impl AtomOptions {
    /// The new atom of `text` these options describe.
    fn atom(&self, text: &str) -> Result<NewAtom, Failure> {
        let mut atom = NewAtom::new(kind_from_name(&self.kind)?, text);
        atom.labels = self.labels.clone();
        atom.importance = self.importance;
        atom.confidence = self.confidence;
        atom.vector = self.vector.clone();
        atom.forbids = self.forbids.clone();
        if let Some(from) = &self.valid_from {
            let until = match &self.valid_until {
                Some(until) => parse_instant(until, "--valid-until")?,
                None => 0,
            };
            atom = atom.valid(parse_instant(from, "--valid-from")?, until);
        }
        Ok(atom)
    }
}

#[derive(Args, Debug)]
struct WatchArguments {
    world: String,
    /// Deliver atoms with a commit after this one (0: the whole world, then live).
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Any of these kinds; repeatable.
    #[arg(long = "kind")]
    kinds: Vec<String>,
    /// All of these labels; repeatable.
    #[arg(long = "label")]
    labels: Vec<String>,
}

#[derive(Args, Debug)]
struct AskArguments {
    world: String,
    /// Any of these kinds; repeatable.
    #[arg(long = "kind")]
    kinds: Vec<String>,
    /// All of these labels; repeatable.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Any of these writers (public key hex); repeatable.
    #[arg(long = "writer")]
    writers: Vec<String>,
    #[arg(long, default_value_t = 0.0)]
    min_importance: f32,
    #[arg(long, default_value_t = 1.0)]
    max_importance: f32,
    #[arg(long, default_value_t = 20)]
    limit: u32,
    /// Only atoms with a commit below this (for paging).
    #[arg(long, default_value_t = 0)]
    before: u64,
    /// Rank by similarity to this vector: comma-separated numbers, e.g. 0.1,0.7,0.2.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    vector: Vec<f32>,
    /// Rank by these words (BM25), fused with --vector when both are given.
    #[arg(long)]
    text: Option<String>,
    /// Show each hit's score and how it was computed.
    #[arg(long)]
    explain: bool,
    /// Only atoms claimed to hold in the world at this instant: an RFC 3339 time or unix
    /// milliseconds (atoms that claim no validity do not match).
    #[arg(long)]
    valid_at: Option<String>,
    /// Answer as the world stood at this commit, or at this RFC 3339 time (the last
    /// commit recorded by then), states included.
    #[arg(long)]
    as_of: Option<String>,
    /// Only atoms in this lifecycle state (asserted, proposed, approved, rejected,
    /// deprecated, superseded, retracted); repeatable. Default: current knowledge
    /// (asserted or approved).
    #[arg(long = "state")]
    states: Vec<String>,
    /// Current knowledge and the proposals beside it: --state asserted --state proposed
    /// --state approved.
    #[arg(long, conflicts_with = "states")]
    include_proposals: bool,
}

/// A failure and the exit code it maps to.
struct Failure {
    exit: u8,
    message: String,
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Self {
        let exit = match &error {
            ClientError::Node {
                code: ErrorCode::Unauthenticated,
                ..
            }
            | ClientError::Connect { .. }
            | ClientError::NodeKeyMismatch { .. }
            | ClientError::KeyFile(_)
            | ClientError::Rpc(_) => 3,
            ClientError::InvalidInput(_) => 2,
            _ => 1,
        };
        Failure {
            exit,
            message: error.to_string(),
        }
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        exit: 2,
        message: message.into(),
    }
}

/// Prints a line on standard output. A reader that went away (`engram ... | head`) ends
/// the command quietly, as it does any good CLI's, rather than in a panic.
macro_rules! out {
    ($($argument:tt)*) => {{
        use std::io::Write as _;
        if let Err(error) = writeln!(std::io::stdout().lock(), $($argument)*) {
            if error.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("engram: cannot write to standard output: {error}");
            std::process::exit(1);
        }
    }};
}

fn main() -> ExitCode {
    match engram_client::run_local(run(Cli::parse())) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(failure)) => {
            eprintln!("engram: {}", failure.message);
            ExitCode::from(failure.exit)
        }
        Err(error) => {
            eprintln!("engram: cannot start the async runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Prints `value` as JSON, or `text` for people.
fn emit(json_output: bool, value: Value, text: impl FnOnce() -> String) {
    if json_output {
        out!("{value}");
    } else {
        out!("{}", text());
    }
}

/// An instant given as unix milliseconds or an RFC 3339 time, in unix milliseconds.
fn parse_instant(text: &str, flag: &str) -> Result<i64, Failure> {
    engram_client::batch::parse_instant(text, flag).map_err(usage)
}

/// The commit `--as-of` names: a commit number as given, or for an RFC 3339 time the
/// last commit of the reader's world recorded at or before it; 0 (now) without one.
async fn resolve_as_of(
    reader: &engram_client::engram_schema::engram_capnp::world_reader::Client,
    as_of: Option<&str>,
) -> Result<u64, Failure> {
    let Some(text) = as_of else {
        return Ok(0);
    };
    if let Ok(commit) = text.parse::<u64>() {
        return Ok(commit);
    }
    let time: jiff::Timestamp = text.parse().map_err(|error| {
        usage(format!(
            "--as-of {text:?}: expected a commit number or an RFC 3339 time \
             (2026-03-03T00:00:00Z): {error}"
        ))
    })?;
    let commit = engram_client::commit_at(reader, time.as_millisecond()).await?;
    if commit == 0 {
        return Err(usage(format!(
            "--as-of {text}: the world holds nothing recorded by then"
        )));
    }
    Ok(commit)
}

/// A page of atoms in commit order and its cursor: JSON `{"atoms", "nextCommit"}`, or
/// the atoms with the cursor on stderr.
fn print_page(json_output: bool, atoms: &[engram_client::AtomView], next: u64) {
    if json_output {
        let values: Vec<Value> = atoms.iter().map(|atom| atom.to_json()).collect();
        out!("{}", json!({"atoms": values, "nextCommit": next}));
    } else {
        print_atoms(false, atoms);
        eprintln!("next cursor: --from {next}");
    }
}

fn parse_hex32(text: &str, what: &str) -> Result<[u8; 32], Failure> {
    hex::decode(text)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| usage(format!("{what} must be 64 hex digits")))
}

/// `engram mcp`: starts the bridge with the capabilities the options name, and serves it.
async fn mcp(cli: &Cli, arguments: &McpArguments) -> Result<(), Failure> {
    use engram_client::mcp::{Acquire, Capabilities, LocalFuture};

    let http = match &arguments.http {
        Some(address) => Some(
            engram_client::mcp::http_address(address).map_err(|error| usage(error.to_string()))?,
        ),
        None => None,
    };
    let endpoint = endpoint(cli)?;
    let named: Vec<&String> = [&arguments.reader, &arguments.writer, &arguments.observer]
        .into_iter()
        .flatten()
        .collect();
    let bridge = if let Some(path) = &cli.token {
        if !named.is_empty() {
            return Err(usage(
                "with --token the bridge holds what the token restores: drop --reader, \
                 --writer and --observer",
            ));
        }
        let token = engram_client::token::read_file(path)?;
        engram_client::mcp::start(
            move || -> Acquire {
                Box::new(move || -> LocalFuture<_> {
                    let (endpoint, token) = (endpoint.clone(), token.clone());
                    Box::pin(async move {
                        let (world, held) = connect(&endpoint).await?.restore(&token).await?;
                        let mut capabilities = Capabilities {
                            world,
                            ..Capabilities::default()
                        };
                        match held {
                            Held::Reader(reader) => capabilities.reader = Some(reader),
                            Held::Writer(writer) => capabilities.writer = Some(writer),
                            Held::Observer(observer) => capabilities.observer = Some(observer),
                            Held::Signer(_) => {
                                return Err(ClientError::InvalidInput(
                                "the token holds a signer; the bridge serves a world's reader, \
                                 writer or observer"
                                    .into(),
                            ));
                            }
                        }
                        Ok(capabilities)
                    })
                })
            },
            false,
        )?
    } else {
        let Some(world) = named.first().map(|world| world.to_string()) else {
            return Err(usage(
                "name what the bridge holds: --reader, --writer and/or --observer WORLD (or --token)",
            ));
        };
        if named.iter().any(|other| **other != world) {
            return Err(usage(
                "--reader, --writer and --observer must name the same world",
            ));
        }
        let restriction = arguments.narrow.resolved()?.restriction()?;
        let key = keyfile::read(&cli.key).map_err(ClientError::from)?;
        let holds = (
            arguments.reader.is_some(),
            arguments.writer.is_some(),
            arguments.observer.is_some(),
        );
        engram_client::mcp::start(
            move || -> Acquire {
                Box::new(move || -> LocalFuture<_> {
                    let (endpoint, key, world, restriction) = (
                        endpoint.clone(),
                        key.clone(),
                        world.clone(),
                        restriction.clone(),
                    );
                    Box::pin(async move {
                        let session = connect(&endpoint).await?.login(&key).await?.graft().await?;
                        let mut capabilities = Capabilities {
                            world: world.clone(),
                            ..Capabilities::default()
                        };
                        if holds.0 {
                            let reader = session.reader(&world)?;
                            capabilities.reader =
                                Some(engram_client::attenuate_reader(&reader, &restriction).await?);
                        }
                        if holds.1 {
                            let writer = session.writer(&world)?;
                            capabilities.writer =
                                Some(engram_client::attenuate_writer(&writer, &restriction).await?);
                        }
                        if holds.2 {
                            let observer = session.observer(&world)?;
                            capabilities.observer = Some(
                                engram_client::attenuate_observer(&observer, &restriction).await?,
                            );
                        }
                        Ok(capabilities)
                    })
                })
            },
            true,
        )?
    };
    match http {
        Some(address) => bridge.serve_http(address).await?,
        None => bridge.serve_stdio().await?,
    }
    Ok(())
}

/// The node --node names, trusted as --node-key or --known-nodes say.
fn endpoint(cli: &Cli) -> Result<Endpoint, ClientError> {
    let endpoint = Endpoint::parse(&cli.node);
    Ok(match (&cli.node_key, &cli.known_nodes) {
        (Some(key), _) => endpoint.trusting(NodeTrust::parse_key(key)?),
        (None, Some(path)) if matches!(endpoint, Endpoint::Tls { .. }) => {
            endpoint.trusting(NodeTrust::KnownNodes(path.clone()))
        }
        _ => endpoint,
    })
}

/// Logs in with --key.
async fn login(cli: &Cli) -> Result<engram_client::Membrane, ClientError> {
    let key = keyfile::read(&cli.key)?;
    let connection = connect(&endpoint(cli)?).await?;
    connection.login(&key).await
}

/// Logs in with --key: for a command that needs a principal, not a token.
async fn membrane(cli: &Cli) -> Result<engram_client::Membrane, Failure> {
    if cli.token.is_some() {
        return Err(usage(
            "this command needs a principal's key (--key), not a token",
        ));
    }
    Ok(login(cli).await?)
}

/// Logs in with --key and grafts: for a command that needs a principal, not a token.
async fn session(cli: &Cli) -> Result<Session, Failure> {
    Ok(membrane(cli).await?.graft().await?)
}

/// A fleet's status as text: the fleet and this node, its nodes, its worlds.
fn fleet_text(status: &engram_client::FleetStatus) -> String {
    let key = hex::encode(status.node_key);
    if status.name.is_empty() {
        return format!("node {key} runs alone (no fleet)");
    }
    let ago = |millis: Option<u64>| {
        millis.map_or("never".to_owned(), |millis| {
            format!("{:.1} s ago", millis as f64 / 1000.0)
        })
    };
    let mut text = format!(
        "fleet {} (lease {:.1} s): node {key} at {}, confirmed the fleet's policy {}\nnodes",
        status.name,
        status.lease_ms as f64 / 1000.0,
        status.address,
        ago(status.confirmed_ago_ms),
    );
    for node in &status.nodes {
        let seen = match node.seen_ago_ms {
            Some(_) => format!(
                "runs (seen {}), confirmed {}",
                ago(node.seen_ago_ms),
                ago(node.confirmed_ago_ms)
            ),
            None => "not seen within the lease".to_owned(),
        };
        text.push_str(&format!(
            "\n  slot {}  {}  {}  {seen}",
            node.slot,
            hex::encode(node.key),
            node.address
        ));
    }
    text.push_str("\nworlds");
    for world in &status.worlds {
        let owner = match &world.owner {
            Some((key, address)) => format!("written at {address} ({})", hex::encode(key)),
            None => "no owner (the next node asked to write it takes it)".to_owned(),
        };
        text.push_str(&format!(
            "\n  {}  {owner}  stream {}  held here {}",
            world.world, world.stream_position, world.held_position
        ));
    }
    text
}

/// What a command acts through: a graft with --key, or with --token the one
/// capability the token restores, of its world.
enum Access {
    Session(Session),
    Token { world: String, held: Held },
}

async fn access(cli: &Cli) -> Result<Access, ClientError> {
    let Some(path) = &cli.token else {
        return Ok(Access::Session(login(cli).await?.graft().await?));
    };
    let token = engram_client::token::read_file(path)?;
    let connection = connect(&endpoint(cli)?).await?;
    let (world, held) = connection.restore(&token).await?;
    Ok(Access::Token { world, held })
}

/// The writer of `world`: what --token restores, or with --key a graft at the node that
/// writes `world` now in a fleet (`login_for_writing` follows its owner).
async fn writer_of(cli: &Cli, world: &str) -> Result<world_writer::Client, ClientError> {
    if cli.token.is_some() {
        return access(cli).await?.writer(world);
    }
    let key = keyfile::read(&cli.key)?;
    let membrane = engram_client::login_for_writing(&endpoint(cli)?, &key, world).await?;
    membrane.graft().await?.writer(world)
}

impl Access {
    /// The capability `pick` finds in the token, if it is of `world` (none for a
    /// signer); `what` names it.
    fn from_token<T>(
        held_world: &str,
        held: &Held,
        world: Option<&str>,
        what: &str,
        pick: impl Fn(&Held) -> Option<T>,
    ) -> Result<T, ClientError> {
        match pick(held) {
            Some(found) if world.is_none_or(|world| world == held_world) => Ok(found),
            _ => Err(ClientError::NotGranted(format!(
                "the token holds the {} of {held_world:?}, not the {what}{}",
                held.kind(),
                world
                    .map(|world| format!(" of {world:?}"))
                    .unwrap_or_default()
            ))),
        }
    }

    fn reader(&self, world: &str) -> Result<world_reader::Client, ClientError> {
        match self {
            Access::Session(session) => session.reader(world),
            Access::Token { world: at, held } => {
                Self::from_token(at, held, Some(world), "reader", Held::reader)
            }
        }
    }

    fn writer(&self, world: &str) -> Result<world_writer::Client, ClientError> {
        match self {
            Access::Session(session) => session.writer(world),
            Access::Token { world: at, held } => {
                Self::from_token(at, held, Some(world), "writer", Held::writer)
            }
        }
    }

    fn observer(&self, world: &str) -> Result<observer::Client, ClientError> {
        match self {
            Access::Session(session) => session.observer(world),
            Access::Token { world: at, held } => {
                Self::from_token(at, held, Some(world), "observer", Held::observer)
            }
        }
    }

    fn signer(&self) -> Result<signer::Client, ClientError> {
        match self {
            Access::Session(session) => Ok(session.signer.clone()),
            Access::Token { world: at, held } => {
                Self::from_token(at, held, None, "signer", Held::signer)
            }
        }
    }

    /// The capability `which` names, narrowed by `narrow` (resolved).
    async fn narrowed(
        &self,
        which: &HeldOptions,
        narrow: &NarrowOptions,
    ) -> Result<(String, Held), Failure> {
        let restriction = narrow.restriction()?;
        Ok(match which {
            HeldOptions {
                reader: Some(world),
                ..
            } => (
                world.clone(),
                Held::Reader(
                    engram_client::attenuate_reader(&self.reader(world)?, &restriction).await?,
                ),
            ),
            HeldOptions {
                writer: Some(world),
                ..
            } => (
                world.clone(),
                Held::Writer(
                    engram_client::attenuate_writer(&self.writer(world)?, &restriction).await?,
                ),
            ),
            HeldOptions {
                observer: Some(world),
                ..
            } => (
                world.clone(),
                Held::Observer(
                    engram_client::attenuate_observer(&self.observer(world)?, &restriction).await?,
                ),
            ),
            _ => {
                let signer = self.signer()?;
                let signer = if narrow.domains.is_empty() {
                    signer
                } else {
                    engram_client::attenuate_signer(&signer, &narrow.domains).await?
                };
                (String::new(), Held::Signer(signer))
            }
        })
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let json_output = cli.json;
    match &cli.command {
        Command::Keygen { path } => {
            let key = keyfile::generate().map_err(ClientError::from)?;
            keyfile::write_new(path, &key).map_err(ClientError::from)?;
            let public = hex::encode(key.verifying_key().as_bytes());
            emit(
                json_output,
                json!({"path": path, "publicKey": public}),
                || public.clone(),
            );
        }
        Command::Whoami => {
            let membrane = membrane(&cli).await?;
            let session = membrane.graft().await?;
            let fleet = membrane.fleet().await?;
            let worlds: Vec<Value> = session
                .worlds
                .iter()
                .map(|(name, held)| {
                    let rights: String = [
                        (held.reader.is_some(), 'r'),
                        (held.writer.is_some(), 'w'),
                        (held.observer.is_some(), 'o'),
                    ]
                    .iter()
                    .filter(|(present, _)| *present)
                    .map(|(_, letter)| *letter)
                    .collect();
                    json!({"world": name, "rights": rights})
                })
                .collect();
            let value = json!({
                "principal": session.principal,
                "admin": session.admin_principal,
                "epoch": session.epoch.to_json(),
                "worlds": worlds,
                "node": hex::encode(fleet.node_key),
                "fleet": (!fleet.name.is_empty()).then_some(&fleet.name),
            });
            emit(json_output, value.clone(), || {
                let mut text = format!(
                    "principal {}{}\nepoch {}\nnode {}{}",
                    session.principal,
                    if session.admin_principal {
                        " (admin)"
                    } else {
                        ""
                    },
                    session.epoch.number,
                    hex::encode(fleet.node_key),
                    match fleet.name.as_str() {
                        "" => " (alone)".to_owned(),
                        name => format!(" in fleet {name} (engram fleet status)"),
                    }
                );
                for world in worlds {
                    text.push_str(&format!(
                        "\n  {}  {}",
                        world["world"].as_str().unwrap_or_default(),
                        world["rights"].as_str().unwrap_or_default()
                    ));
                }
                text
            });
        }
        Command::World(command) => {
            let admin = session(&cli).await?.admin()?;
            let worlds = match command {
                WorldCommand::Create {
                    name,
                    vector_dimension,
                } => vec![
                    engram_client::create_world_with_dimension(&admin, name, *vector_dimension)
                        .await?,
                ],
                WorldCommand::Archive { name } => {
                    vec![engram_client::set_world_archived(&admin, name, true).await?]
                }
                WorldCommand::Resume { name } => {
                    vec![engram_client::set_world_archived(&admin, name, false).await?]
                }
                WorldCommand::List => engram_client::list_worlds(&admin).await?,
            };
            let values: Vec<Value> = worlds.iter().map(|world| world.to_json()).collect();
            let value = if matches!(command, WorldCommand::List) {
                Value::Array(values)
            } else {
                values.into_iter().next().unwrap_or(Value::Null)
            };
            emit(json_output, value, || {
                worlds
                    .iter()
                    .map(|world| {
                        let vectors = match world.vector_dimension {
                            0 => String::new(),
                            dimension => format!("  vectors of {dimension}"),
                        };
                        format!(
                            "{}  {}  {} atoms{vectors}",
                            world.name,
                            if world.archived { "archived" } else { "active" },
                            world.atoms
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        Command::Principal(command) => {
            let admin = session(&cli).await?.admin()?;
            let parse_grants = |texts: &[String]| -> Result<Vec<Grant>, Failure> {
                texts
                    .iter()
                    .map(|text| Grant::parse(text).map_err(Failure::from))
                    .collect()
            };
            let principals = match command {
                PrincipalCommand::Add {
                    name,
                    public_key,
                    admin: is_admin,
                    grants,
                } => {
                    let key = parse_hex32(public_key, "--public-key")?;
                    vec![
                        engram_client::add_principal(
                            &admin,
                            name,
                            &key,
                            *is_admin,
                            &parse_grants(grants)?,
                        )
                        .await?,
                    ]
                }
                PrincipalCommand::Grants { name, grants } => {
                    vec![engram_client::set_grants(&admin, name, &parse_grants(grants)?).await?]
                }
                PrincipalCommand::Remove { name } => {
                    engram_client::remove_principal(&admin, name).await?;
                    emit(json_output, json!({"removed": name}), || {
                        format!("removed {name}")
                    });
                    return Ok(());
                }
                PrincipalCommand::List => engram_client::list_principals(&admin).await?,
            };
            let values: Vec<Value> = principals.iter().map(|p| p.to_json()).collect();
            let value = if matches!(command, PrincipalCommand::List) {
                Value::Array(values)
            } else {
                values.into_iter().next().unwrap_or(Value::Null)
            };
            emit(json_output, value, || {
                principals
                    .iter()
                    .map(|principal| {
                        let grants: Vec<String> = principal
                            .grants
                            .iter()
                            .map(|grant| format!("{}={}", grant.world, grant.rights()))
                            .collect();
                        format!(
                            "{}  {}{}  {}",
                            principal.name,
                            hex::encode(principal.public_key),
                            if principal.admin { "  admin" } else { "" },
                            grants.join(" ")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        Command::Remember(arguments) => {
            let atoms = match &arguments.batch {
                Some(path) => read_batch(path)?,
                None => {
                    let atom = arguments
                        .atom
                        .atom(arguments.text.as_deref().unwrap_or_default())?;
                    vec![if arguments.proposed {
                        atom.proposed()
                    } else {
                        atom
                    }]
                }
            };
            remember(&cli, &arguments.world, &atoms, &arguments.retry).await?;
        }
        Command::Propose(arguments) => {
            let atom = arguments.atom.atom(&arguments.text)?.proposed();
            remember(&cli, &arguments.world, &[atom], &arguments.retry).await?;
        }
        Command::Supersede(arguments) => {
            let old = parse_hex32(&arguments.old, "the id of the atom it replaces")?;
            let atom = arguments.atom.atom(&arguments.text)?.supersedes(old);
            remember(&cli, &arguments.world, &[atom], &arguments.retry).await?;
        }
        Command::Approve(arguments) => {
            transition(&cli, arguments, TransitionKind::Approve).await?;
        }
        Command::Reject(arguments) => {
            transition(&cli, arguments, TransitionKind::Reject).await?;
        }
        Command::Deprecate(arguments) => {
            transition(&cli, arguments, TransitionKind::Deprecate).await?;
        }
        Command::Retract(arguments) => {
            transition(&cli, arguments, TransitionKind::Retract).await?;
        }
        Command::Get { world, id, as_of } => {
            let id = parse_hex32(id, "the atom id")?;
            let reader = access(&cli).await?.reader(world)?;
            let as_of = resolve_as_of(&reader, as_of.as_deref()).await?;
            let atom = engram_client::get_as_of(&reader, &id, as_of).await?;
            emit(json_output, atom.to_json(), || describe(&atom, true));
        }
        Command::Ask(arguments) => {
            let mut filter = Filter {
                labels: arguments.labels.clone(),
                min_importance: arguments.min_importance,
                max_importance: arguments.max_importance,
                limit: arguments.limit,
                before_commit: arguments.before,
                vector: arguments.vector.clone(),
                text: arguments.text.clone().unwrap_or_default(),
                explain: arguments.explain,
                valid_at: match &arguments.valid_at {
                    Some(instant) => Some(parse_instant(instant, "--valid-at")?),
                    None => None,
                },
                ..Filter::default()
            };
            if arguments.include_proposals {
                filter.states = vec![
                    LifecycleState::Asserted,
                    LifecycleState::Proposed,
                    LifecycleState::Approved,
                ];
            }
            for state in &arguments.states {
                filter.states.push(state_from_name(state)?);
            }
            for kind in &arguments.kinds {
                filter.kinds.push(kind_from_name(kind)?);
            }
            for writer in &arguments.writers {
                filter.writers.push(parse_hex32(writer, "--writer")?);
            }
            let reader = access(&cli).await?.reader(&arguments.world)?;
            filter.as_of = resolve_as_of(&reader, arguments.as_of.as_deref()).await?;
            let answer = engram_client::ask_scored(&reader, &filter).await?;
            if !answer.warning.is_empty() {
                eprintln!("engram: note: {}", answer.warning);
            }
            if let Some(before) = answer.resume_before_commit {
                eprintln!("engram: note: more may match: run again with --before {before}");
            }
            if json_output {
                let hits: Vec<Value> = answer
                    .hits
                    .iter()
                    .map(|hit| {
                        let mut atom = hit.atom.to_json();
                        atom["score"] = json!(hit.score);
                        atom["similarity"] = json!(hit.similarity);
                        if !hit.explanation.is_empty() {
                            atom["explanation"] = json!(hit.explanation);
                        }
                        atom["contradictions"] = json!(
                            hit.contradictions
                                .iter()
                                .map(hex::encode)
                                .collect::<Vec<_>>()
                        );
                        atom
                    })
                    .collect();
                out!("{}", Value::Array(hits));
            } else {
                for hit in &answer.hits {
                    out!("{}", describe(&hit.atom, false));
                    for id in &hit.contradictions {
                        out!("    in contradiction with {}", hex::encode(id));
                    }
                    if arguments.explain {
                        out!("    score {:.4}: {}", hit.score, hit.explanation);
                    }
                }
            }
        }
        Command::Replay { world, from, limit } => {
            let reader = access(&cli).await?.reader(world)?;
            let (atoms, next) = engram_client::replay(&reader, *from, *limit).await?;
            print_page(json_output, &atoms, next);
        }
        Command::Diff {
            world,
            from,
            to,
            limit,
        } => {
            let reader = access(&cli).await?.reader(world)?;
            let (atoms, next) = engram_client::diff(&reader, *from, *to, *limit).await?;
            print_page(json_output, &atoms, next);
        }
        Command::Watch(arguments) => {
            let mut filter = Filter {
                labels: arguments.labels.clone(),
                ..Filter::default()
            };
            for kind in &arguments.kinds {
                filter.kinds.push(kind_from_name(kind)?);
            }
            let observer = access(&cli).await?.observer(&arguments.world)?;
            let mut watch = engram_client::subscribe(&observer, &filter, arguments.from).await?;
            while let Some(event) = watch.next().await {
                match event {
                    WatchEvent::Atoms(atoms) => {
                        for atom in &atoms {
                            if json_output {
                                out!("{}", atom.to_json());
                            } else {
                                out!("{}", describe(atom, false));
                            }
                        }
                    }
                    WatchEvent::End { code, message } => {
                        let code = code.map(|code| format!("{code}: ")).unwrap_or_default();
                        return Err(Failure {
                            exit: 1,
                            message: format!("the node ended the subscription: {code}{message}"),
                        });
                    }
                }
            }
            return Err(Failure {
                exit: 3,
                message: "the connection to the node was lost".into(),
            });
        }
        Command::Heads { world, as_of } => {
            let reader = access(&cli).await?.reader(world)?;
            let as_of = resolve_as_of(&reader, as_of.as_deref()).await?;
            let heads = engram_client::heads_as_of(&reader, as_of).await?;
            let values: Vec<Value> = heads.iter().map(|head| head.to_json()).collect();
            emit(json_output, Value::Array(values), || {
                heads
                    .iter()
                    .map(|head| {
                        format!(
                            "writer {}  seq {}  head {}",
                            hex::encode(head.writer),
                            head.seq,
                            hex::encode(head.id)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        Command::Spawn(arguments) => {
            let narrow = arguments.narrow.resolved()?;
            let (world, held) = access(&cli)
                .await?
                .narrowed(&arguments.held, &narrow)
                .await?;
            let mut command = std::process::Command::new(&arguments.command[0]);
            command.args(&arguments.command[1..]);
            let limits = engram_client::spawn::ChildLimits {
                unread_bytes_max: arguments.unread_bytes_max,
                stall_timeout: std::time::Duration::from_millis(arguments.stall_timeout_ms),
            };
            let endpoint = endpoint(&cli)?;
            let mut child =
                engram_client::spawn::spawn(&endpoint, &held, &world, &mut command, &limits)
                    .await?;
            let status = tokio::task::spawn_blocking(move || child.wait())
                .await
                .map_err(|error| usage(format!("waiting for the child: {error}")))?
                .map_err(|error| usage(format!("waiting for the child: {error}")))?;
            if !status.success() {
                return Err(Failure {
                    exit: status.code().map_or(1, |code| code.clamp(1, 255) as u8),
                    message: format!("{} exited with {status}", arguments.command[0]),
                });
            }
        }
        Command::Mcp(arguments) => mcp(&cli, arguments).await?,
        Command::Token(command) => token_command(&cli, command).await?,
        Command::Audit {
            principal,
            from,
            to,
            after_sequence,
            limit,
        } => {
            let admin = session(&cli).await?.admin()?;
            let records =
                engram_client::audit(&admin, principal, *from, *to, *after_sequence, *limit)
                    .await?;
            let values: Vec<Value> = records.iter().map(|record| record.to_json()).collect();
            emit(json_output, Value::Array(values), || {
                records
                    .iter()
                    .map(|record| {
                        let restriction = if record.restriction == "{}" {
                            String::new()
                        } else {
                            format!(" through {}", record.restriction)
                        };
                        format!(
                            "commit {} seq {}  {} {}{}: {}\n    {} ids{}",
                            record.commit,
                            record.sequence,
                            record.method,
                            record.world,
                            restriction,
                            record.query,
                            record.ids.len(),
                            record
                                .ids
                                .iter()
                                .map(|id| format!(" {}", &hex::encode(id)[..16]))
                                .collect::<String>()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        Command::Check {
            world,
            plan,
            labels,
        } => {
            let plan = if plan == "-" {
                std::io::read_to_string(std::io::stdin())
                    .map_err(|error| usage(format!("reading the plan from stdin: {error}")))?
            } else {
                plan.clone()
            };
            let reader = access(&cli).await?.reader(world)?;
            let answer = engram_client::check(&reader, &plan, labels).await?;
            if !answer.warning.is_empty() {
                eprintln!("engram: note: {}", answer.warning);
            }
            let values: Vec<Value> = answer
                .violations
                .iter()
                .map(|found| found.to_json())
                .collect();
            emit(json_output, Value::Array(values), || {
                if answer.violations.is_empty() {
                    return "ok: the plan violates no constraint".into();
                }
                answer
                    .violations
                    .iter()
                    .map(|found| {
                        format!(
                            "violates {} (writer {}, commit {}, {}): matched {}\n    {}",
                            found.constraint.id_hex(),
                            &hex::encode(found.constraint.writer)[..16],
                            found.constraint.commit,
                            jiff::Timestamp::from_millisecond(found.constraint.recorded_at_unix_ms)
                                .map(|time| time.to_string())
                                .unwrap_or_default(),
                            found.matched.join(", "),
                            found.constraint.text
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            if !answer.violations.is_empty() {
                return Err(Failure {
                    exit: 5,
                    message: format!(
                        "the plan violates {} constraint(s)",
                        answer.violations.len()
                    ),
                });
            }
        }
        Command::Trust {
            world,
            writer,
            label,
        } => {
            let writer = parse_hex32(writer, "the writer key")?;
            let reader = access(&cli).await?.reader(world)?;
            let trust = engram_client::trust(&reader, &writer, label).await?;
            emit(json_output, trust.to_json(), || {
                format!(
                    "trust {:.3}  ({} confirms, {} corrects)",
                    trust.score, trust.confirms, trust.corrects
                )
            });
        }
        Command::Generation { world } => {
            let reader = access(&cli).await?.reader(world)?;
            let generation = engram_client::generation(&reader).await?;
            emit(json_output, generation.to_json(), || {
                let atoms = if generation.counted {
                    format!("{} atoms", generation.atoms)
                } else {
                    "atoms not counted through this restriction".to_owned()
                };
                format!(
                    "world {world}: last commit {}, {atoms}; node at commit {}",
                    generation.last_commit, generation.node_commit
                )
            });
        }
        Command::Backup { destination } => {
            let admin = session(&cli).await?.admin()?;
            let bar = progress(None, "bytes");
            let summary = engram_client::backup::backup(&admin, destination, |written| {
                bar.set_position(written)
            })
            .await?;
            bar.finish_and_clear();
            emit(
                json_output,
                json!({
                    "destination": destination.display().to_string(),
                    "lastCommit": summary.last_commit,
                    "epoch": summary.epoch,
                    "worlds": summary.worlds.len(),
                    "bytes": summary.bytes(),
                }),
                || {
                    format!(
                        "backed up {} worlds up to commit {} ({} bytes) into {}",
                        summary.worlds.len(),
                        summary.last_commit,
                        summary.bytes(),
                        destination.display()
                    )
                },
            );
        }
        Command::Export { world, output } => {
            let reader = access(&cli).await?.reader(world)?;
            let count = export(&reader, output.as_deref()).await?;
            if output.is_some() {
                emit(json_output, json!({"world": world, "atoms": count}), || {
                    format!("exported {count} atoms of world {world}")
                });
            }
        }
        Command::Import { world, file, batch } => {
            if !(1..=10_000).contains(batch) {
                return Err(usage("--batch takes 1 to 10,000 atoms"));
            }
            let writer = writer_of(&cli, world).await?;
            let (written, replayed) = import(&writer, world, file.as_deref(), *batch).await?;
            emit(
                json_output,
                json!({"world": world, "written": written, "alreadyWritten": replayed}),
                || {
                    format!(
                        "imported {} atoms into world {world} ({written} written now, {replayed} by an earlier run)",
                        written + replayed
                    )
                },
            );
        }
        Command::Verify { world } => {
            let reader = access(&cli).await?.reader(world)?;
            // One call: the node recomputes every chain; a spinner shows it is at work.
            let bar = indicatif::ProgressBar::new_spinner().with_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .expect("a valid template"),
            );
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.set_message(format!("verifying every chain of world {world}"));
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            let verification = engram_client::verify(&reader).await;
            bar.finish_and_clear();
            let verification = verification?;
            emit(
                json_output,
                verification.to_json(),
                || match &verification.first_bad {
                    None => format!(
                        "ok: {} chains, {} entries verified",
                        verification.chains, verification.entries
                    ),
                    Some((writer, seq, reason)) => format!(
                        "BAD: world {world} writer {} seq {seq}: {reason}",
                        hex::encode(writer)
                    ),
                },
            );
            if verification.first_bad.is_some() {
                return Err(Failure {
                    exit: 4,
                    message: format!("world {world} failed verification"),
                });
            }
        }
        Command::Fleet(FleetCommand::Status) => {
            let status = membrane(&cli).await?.fleet().await?;
            emit(json_output, status.to_json(), || fleet_text(&status));
        }
        Command::Epoch(command) => {
            let admin = session(&cli).await?.admin()?;
            let epoch = match command {
                EpochCommand::Show => engram_client::current_epoch(&admin).await?,
                EpochCommand::Advance { head } => {
                    let head = match head {
                        Some(head) => parse_hex32(head, "--head")?,
                        None => [0; 32],
                    };
                    engram_client::advance_epoch(&admin, &head).await?
                }
            };
            emit(json_output, epoch.to_json(), || {
                format!("epoch {}  head {}", epoch.number, hex::encode(epoch.head))
            });
        }
    }
    Ok(())
}

/// Remembers `atoms` in `world` and prints their receipts.
async fn token_command(cli: &Cli, command: &TokenCommand) -> Result<(), Failure> {
    use engram_client::token;
    // Prints a token, or writes it to a file.
    let deliver = |token: &[u8], output: &Option<PathBuf>| -> Result<(), Failure> {
        match output {
            Some(path) => {
                token::write_file(path, token)?;
                emit(cli.json, json!({"written": path}), || {
                    format!("token written to {}", path.display())
                });
            }
            None => {
                let text = token::to_text(token)?;
                emit(cli.json, json!({"token": text}), || text.clone());
            }
        }
        Ok(())
    };
    match command {
        TokenCommand::Save {
            held,
            narrow,
            output,
        } => {
            let narrow = narrow.resolved()?;
            let (_, held) = access(cli).await?.narrowed(held, &narrow).await?;
            deliver(&token::save(&held).await?, output)?;
        }
        TokenCommand::Attenuate {
            file,
            narrow,
            output,
        } => {
            let narrowing = narrow.resolved()?.narrowing()?;
            let narrowed = token::attenuate(&token::read_file(file)?, &narrowing)?;
            deliver(&narrowed, output)?;
        }
        TokenCommand::Show { file } => {
            let blocks = token::describe(&token::read_file(file)?)?;
            emit(cli.json, json!({"blocks": blocks}), || {
                blocks
                    .iter()
                    .enumerate()
                    .map(|(index, block)| {
                        let title = if index == 0 {
                            "block 0 (the node's)".to_owned()
                        } else {
                            format!("block {index}")
                        };
                        format!("{title}:\n{}", block.trim_end())
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        TokenCommand::Revoke { file } => {
            let revoked = token::read_file(file)?;
            let membrane = login(cli).await?;
            let session = membrane.graft().await?;
            match &session.admin {
                Some(admin) => token::revoke_token(admin, &revoked).await?,
                None => membrane.revoke_token(&revoked).await?,
            }
            emit(cli.json, json!({"revoked": file}), || {
                format!("revoked {}", file.display())
            });
        }
    }
    Ok(())
}

/// Remembers `atoms` with an idempotency key, retrying as `retry` says, and prints
/// the receipts (saying so on stderr when the node had already done the request).
async fn remember(
    cli: &Cli,
    world: &str,
    atoms: &[NewAtom],
    retry: &RetryOptions,
) -> Result<(), Failure> {
    let key = retry.key()?;
    let acquire = || writer_of(cli, world);
    let attempts = retry.attempts;
    let retrying = |attempt, error: &ClientError| {
        eprintln!("engram: attempt {attempt} of {attempts} failed ({error}); trying again");
    };
    let remembered =
        engram_client::remember_retrying_telling(acquire, atoms, &key, attempts, retrying)
            .await
            .inspect_err(|_| {
                // Whatever failed, the user can retry it without writing twice.
                let key = String::from_utf8_lossy(key.as_bytes());
                eprintln!(
                    "engram: the write's idempotency key: {key:?}; to retry it, run the command \
                 again with --idempotency-key {key:?} (within 24 hours): it writes at most once"
                );
            })?;
    if remembered.replayed && !cli.json {
        eprintln!(
            "engram: this idempotency key's request was done before; its receipts again, nothing written"
        );
    }
    print_receipts(cli.json, &remembered.receipts, Some(remembered.replayed));
    Ok(())
}

/// Makes one lifecycle transition and prints the transition atom's receipt.
async fn transition(
    cli: &Cli,
    arguments: &TransitionArguments,
    kind: TransitionKind,
) -> Result<(), Failure> {
    let target = parse_hex32(&arguments.id, "the atom id")?;
    let writer = writer_of(cli, &arguments.world).await?;
    let receipt = engram_client::transition(&writer, &target, kind, &arguments.reason).await?;
    print_receipts(cli.json, &[receipt], None);
    Ok(())
}

/// Prints receipts; `replayed`, when a keyed write says whether they are of a request
/// done before, goes into each receipt's JSON.
fn print_receipts(json_output: bool, receipts: &[engram_client::Receipt], replayed: Option<bool>) {
    let values: Vec<Value> = receipts
        .iter()
        .map(|receipt| {
            let mut value = receipt.to_json();
            if let Some(replayed) = replayed {
                value["replayed"] = Value::Bool(replayed);
            }
            value
        })
        .collect();
    emit(json_output, Value::Array(values), || {
        receipts
            .iter()
            .map(|receipt| {
                format!(
                    "{}  seq {}  commit {}",
                    receipt.id_hex(),
                    receipt.seq,
                    receipt.commit
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
}

fn describe(atom: &engram_client::AtomView, long: bool) -> String {
    let labels = if atom.labels.is_empty() {
        String::new()
    } else {
        format!("  [{}]", atom.labels.join(", "))
    };
    // Most atoms are asserted: only another state is worth a word.
    let state = if atom.state == LifecycleState::Asserted {
        String::new()
    } else {
        format!(" ({})", state_name(atom.state))
    };
    let mut text = format!(
        "#{} {}{} {}{}  importance {}\n    {}",
        atom.commit,
        kind_name(atom.kind),
        state,
        &atom.id_hex()[..16],
        labels,
        atom.importance,
        atom.text
    );
    if long {
        text.push_str(&format!(
            "\n    id {}\n    writer {} seq {}\n    prev {}",
            atom.id_hex(),
            hex::encode(atom.writer),
            atom.seq,
            hex::encode(atom.prev)
        ));
    }
    text
}

fn print_atoms(json_output: bool, atoms: &[engram_client::AtomView]) {
    if json_output {
        let values: Vec<Value> = atoms.iter().map(|atom| atom.to_json()).collect();
        out!("{}", Value::Array(values));
    } else {
        for atom in atoms {
            out!("{}", describe(atom, false));
        }
    }
}

/// Reads JSON lines of atoms from a file or stdin (`-`).
fn read_batch(path: &PathBuf) -> Result<Vec<NewAtom>, Failure> {
    let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(path)
            .map_err(|error| usage(format!("{}: {error}", path.display())))?;
        Box::new(std::io::BufReader::new(file))
    };
    let mut atoms = Vec::new();
    for (number, line) in reader.lines().enumerate() {
        let line = line.map_err(|error| usage(format!("{}: {error}", path.display())))?;
        if line.trim().is_empty() {
            continue;
        }
        atoms.push(
            engram_client::batch::atom_from_json_line(&line).map_err(|message| {
                usage(format!("{} line {}: {message}", path.display(), number + 1))
            })?,
        );
    }
    if atoms.is_empty() {
        return Err(usage(format!("{}: no atoms in the batch", path.display())));
    }
    Ok(atoms)
}

/// A progress bar on stderr for a person at a terminal (hidden otherwise): `total`
/// units if known, else a counter; `unit` names them.
fn progress(total: Option<u64>, unit: &str) -> indicatif::ProgressBar {
    let bar = match total {
        Some(total) => indicatif::ProgressBar::new(total).with_style(
            indicatif::ProgressStyle::with_template(&format!(
                "{{bar:40}} {{human_pos}}/{{human_len}} {unit} ({{per_sec}}, {{eta}} left)"
            ))
            .expect("a valid template"),
        ),
        None => indicatif::ProgressBar::new_spinner().with_style(
            indicatif::ProgressStyle::with_template(&format!(
                "{{spinner}} {{human_pos}} {unit} ({{per_sec}}, {{elapsed}})"
            ))
            .expect("a valid template"),
        ),
    };
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar
}

/// Writes every atom `reader` sees, in commit order, as export lines to `output` (or
/// stdout); returns how many.
async fn export(
    reader: &engram_client::engram_schema::engram_capnp::world_reader::Client,
    output: Option<&Path>,
) -> Result<u64, Failure> {
    use std::io::Write;
    let mut sink: Box<dyn Write> = match output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .map_err(|error| usage(format!("creating {}: {error}", path.display())))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let to_stdout = output.is_none();
    let written = |error: std::io::Error| {
        // A reader of standard output that went away ends the command quietly, as `out!`.
        if to_stdout && error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        Failure {
            exit: 1,
            message: format!("writing the export: {error}"),
        }
    };
    let bar = progress(None, "atoms");
    let (mut from, mut count) = (0, 0u64);
    loop {
        let (atoms, next) = engram_client::replay(reader, from, 1000).await?;
        for atom in &atoms {
            writeln!(sink, "{}", engram_client::export::export_line(atom)).map_err(written)?;
        }
        count += atoms.len() as u64;
        bar.set_position(count);
        if atoms.is_empty() && next <= from {
            break;
        }
        from = next;
    }
    sink.flush().map_err(written)?;
    bar.finish_and_clear();
    Ok(count)
}

/// Imports the export at `file` (or stdin) into `world` through `writer`, `batch`
/// atoms a request at most and [`IMPORT_BATCH_BYTES`] of export lines (so that large
/// atoms make smaller requests); returns how many atoms were written now and how many
/// an earlier run had written.
///
/// [`IMPORT_BATCH_BYTES`]: engram_client::export::IMPORT_BATCH_BYTES
async fn import(
    writer: &engram_client::engram_schema::engram_capnp::world_writer::Client,
    world: &str,
    file: Option<&Path>,
    batch: usize,
) -> Result<(u64, u64), Failure> {
    use engram_client::export::{ChainCheck, Exported, IMPORT_BATCH_BYTES, Imported, parse_line};
    use std::io::BufRead;
    let (input, total): (Box<dyn BufRead>, Option<u64>) = match file {
        Some(path) => {
            let opened = std::fs::File::open(path)
                .map_err(|error| usage(format!("reading {}: {error}", path.display())))?;
            let length = opened.metadata().map(|metadata| metadata.len()).ok();
            (Box::new(std::io::BufReader::new(opened)), length)
        }
        None => (Box::new(std::io::BufReader::new(std::io::stdin())), None),
    };
    let name = file.map_or("stdin".to_owned(), |path| path.display().to_string());
    let bar = progress(total, "bytes");
    let mut chains = ChainCheck::default();
    let mut batches = Batches {
        writer,
        world,
        name: &name,
        imported: Imported::default(),
        written: 0,
        replayed: 0,
    };
    let mut read = 0u64;
    // The batch being read, its bytes of lines, and the number of its last line.
    let (mut pending, mut pending_bytes, mut last_line): (Vec<Exported>, usize, usize) =
        (Vec::new(), 0, 0);
    for (index, line) in input.lines().enumerate() {
        let line = line.map_err(|error| usage(format!("reading {name}: {error}")))?;
        read += line.len() as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        let exported = parse_line(&line)
            .and_then(|exported| chains.check(&exported).map(|()| exported))
            .map_err(|error| usage(format!("{name} line {}: {error}", index + 1)))?;
        if !pending.is_empty() && pending_bytes + line.len() > IMPORT_BATCH_BYTES {
            batches.send(&mut pending, last_line).await?;
            pending_bytes = 0;
        }
        pending.push(exported);
        pending_bytes += line.len();
        last_line = index + 1;
        if pending.len() >= batch {
            batches.send(&mut pending, last_line).await?;
            pending_bytes = 0;
        }
        bar.set_position(read);
    }
    if !pending.is_empty() {
        batches.send(&mut pending, last_line).await?;
    }
    bar.finish_and_clear();
    Ok((batches.written, batches.replayed))
}

/// `engram import`'s batches as they are written.
struct Batches<'a> {
    writer: &'a engram_client::engram_schema::engram_capnp::world_writer::Client,
    world: &'a str,
    /// The file's name, as errors name it.
    name: &'a str,
    imported: engram_client::export::Imported,
    written: u64,
    replayed: u64,
}

impl Batches<'_> {
    /// Writes `pending` (emptied) as one keyed batch; `last_line` is the number of its
    /// last line in the file, as an error names it.
    async fn send(
        &mut self,
        pending: &mut Vec<engram_client::export::Exported>,
        last_line: usize,
    ) -> Result<(), Failure> {
        let atoms: Vec<_> = (pending.iter())
            .map(|atom| self.imported.to_write(atom))
            .collect();
        let key = engram_client::export::batch_key(self.world, pending);
        let answer = engram_client::remember_keyed(self.writer, &atoms, &key)
            .await
            .map_err(|error| Failure {
                message: format!(
                    "{error} (the batch ending at {} line {last_line}; what was imported before it stays, and running the import again goes on from it)",
                    self.name
                ),
                ..Failure::from(error)
            })?;
        for (original, receipt) in pending.iter().zip(&answer.receipts) {
            self.imported.record(original.id, receipt.id);
        }
        let count = pending.len() as u64;
        if answer.replayed {
            self.replayed += count;
        } else {
            self.written += count;
        }
        pending.clear();
        Ok(())
    }
}
