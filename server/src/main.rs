//! `engramd`: the engram node. `engramd --help` lists the options.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::builder::TypedValueParser;
use clap::{CommandFactory, FromArgMatches, Parser};
use engram_capabilities::NodeLimits;
use engram_capabilities::limits::{
    CALLS_IN_FLIGHT_PER_CONNECTION_MAX_DEFAULT, LOGIN_ATTEMPTS_PER_MINUTE_DEFAULT,
    READS_IN_FLIGHT_PER_CONNECTION_MAX_DEFAULT, SLOW_CALL_MS_DEFAULT,
    SUBSCRIPTIONS_PER_PRINCIPAL_MAX_DEFAULT,
};
use engram_server::limits::{
    CONNECTION_UNREAD_BYTES_MAX_DEFAULT, CONNECTIONS_MAX_DEFAULT,
    CONNECTIONS_PER_ADDRESS_MAX_DEFAULT, HANDSHAKE_TIMEOUT_MS_DEFAULT, IDLE_TIMEOUT_MS_DEFAULT,
    MESSAGE_BYTES_MAX_DEFAULT, PRE_AUTH_CONNECTIONS_MAX_DEFAULT, WRITE_STALL_TIMEOUT_MS_DEFAULT,
};
use engram_server::{Config, SOCKET_FILE, settings};
use engram_store::limits::CACHE_BYTES_DEFAULT;

/// The engram node: memory and coordination for fleets of AI agents, over Cap'n Proto.
///
/// On first start it creates the data directory with the redb store, the node key and
/// `admin.key`, the admin principal's key (mode 0600). It prints
/// `engramd ready tcp=ADDR unix=PATH tls=on|off node_key=HEX metrics=ADDR` on stdout once it accepts
/// connections, logs to
/// stderr (RUST_LOG sets the filter), and exits 0 after SIGINT or SIGTERM.
/// Every option may also come from an `ENGRAM_*` environment variable (`--cache-mib` from
/// `ENGRAM_CACHE_MIB`) or the configuration file (`cache-mib = 256`); flags override
/// variables, which override the file.
/// Exit codes: 0 stopped cleanly, 1 could not start (the message says why), 2 bad usage.
#[derive(Parser, Debug)]
#[command(name = "engramd", version)]
struct Arguments {
    #[command(subcommand)]
    command: Option<Subcommand>,
    /// Data directory: the redb file, node.key, admin.key and the Unix socket.
    #[arg(long, default_value = "./engram-data")]
    data: PathBuf,
    /// The configuration file (TOML; keys are these options' long names) [default:
    /// DATA/engram.toml if it exists].
    #[arg(long, env = "ENGRAM_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective configuration, each value with its source, and exit.
    #[arg(long)]
    print_config: bool,
    /// TCP address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7420")]
    listen: String,
    /// Do not listen on TCP.
    #[arg(long)]
    no_tcp: bool,
    /// Speak TLS 1.3 on TCP, with a certificate of the node key: clients connect to
    /// tls://ADDRESS and pin the key (the ready line prints it as node_key=).
    #[arg(long)]
    tls: bool,
    /// Listen on a TCP address off loopback without TLS (refused otherwise).
    #[arg(long)]
    insecure: bool,
    /// Unix socket path [default: DATA/engramd.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Do not listen on a Unix socket.
    #[arg(long)]
    no_socket: bool,
    /// Client connections served at once; one past it is answered `resourceExhausted`.
    #[arg(long, default_value_t = CONNECTIONS_MAX_DEFAULT)]
    connections_max: usize,
    /// Connections one peer may hold: a TCP peer by IP address, a Unix socket peer by
    /// user id. One past it is answered `resourceExhausted`.
    #[arg(long, default_value_t = CONNECTIONS_PER_ADDRESS_MAX_DEFAULT)]
    connections_per_address_max: usize,
    /// Connections that have not logged in yet, of every peer together. Once this or a
    /// limit above is met, a new connection closes the oldest one that has not logged
    /// in (the peer's own, for the limit per peer) instead of being refused.
    #[arg(long, default_value_t = PRE_AUTH_CONNECTIONS_MAX_DEFAULT, value_parser = clap::value_parser!(u64).range(1..).map(|value| value as usize))]
    pre_auth_connections_max: usize,
    /// Milliseconds a new connection may take to log in before it is closed.
    #[arg(long, default_value_t = HANDSHAKE_TIMEOUT_MS_DEFAULT)]
    handshake_timeout_ms: u64,
    /// Milliseconds a logged-in connection may send nothing, with no call in flight and
    /// no live subscription, before it is closed; 0 for never. (A child handed off on
    /// the Unix socket lives while its parent holds the handoff instead.)
    #[arg(long, default_value_t = IDLE_TIMEOUT_MS_DEFAULT)]
    idle_timeout_ms: u64,
    /// Bytes of answers a connection may leave unread; past it, its calls are not read
    /// until it reads its answers.
    #[arg(long, default_value_t = CONNECTION_UNREAD_BYTES_MAX_DEFAULT)]
    connection_unread_bytes_max: usize,
    /// Milliseconds a connection's peer may read none of its waiting answers before the
    /// connection is closed.
    #[arg(long, default_value_t = WRITE_STALL_TIMEOUT_MS_DEFAULT)]
    write_stall_timeout_ms: u64,
    /// Login attempts one peer may make a minute, in a burst or spread (a TCP peer by
    /// IP address, a Unix socket peer by process); more are refused with
    /// resourceExhausted. 0 sets no limit.
    #[arg(long, default_value_t = LOGIN_ATTEMPTS_PER_MINUTE_DEFAULT)]
    login_attempts_per_minute: u32,
    /// Largest incoming message in bytes; larger ones end the connection.
    #[arg(long, default_value_t = MESSAGE_BYTES_MAX_DEFAULT)]
    message_bytes_max: usize,
    /// MiB of the store's page cache: the bound on the memory redb keeps for reads.
    #[arg(long, default_value_t = CACHE_BYTES_DEFAULT / (1024 * 1024))]
    cache_mib: usize,
    /// Live subscriptions one principal may hold; more are refused with resourceExhausted.
    #[arg(long, default_value_t = SUBSCRIPTIONS_PER_PRINCIPAL_MAX_DEFAULT)]
    subscriptions_per_principal_max: usize,
    /// Writes, verifications and searches one connection (all its logins) may have in
    /// flight; more are refused with resourceExhausted.
    #[arg(long, default_value_t = CALLS_IN_FLIGHT_PER_CONNECTION_MAX_DEFAULT)]
    calls_in_flight_max: usize,
    /// Of those, reads off the RPC thread (searches, long asks and replays,
    /// verifications) one connection may have in flight.
    #[arg(long, default_value_t = READS_IN_FLIGHT_PER_CONNECTION_MAX_DEFAULT)]
    reads_in_flight_max: usize,
    /// Reads that run off the RPC thread at once (searches, asks and replays that
    /// examine more than a few hundred entries, verifications); more wait their turn
    /// [default: the number of cores].
    #[arg(long)]
    read_workers: Option<usize>,
    /// Join a fleet through the NATS server at this URL (JetStream enabled): the
    /// epoch, principals and worlds are then the fleet's (README, Fleets). Without it
    /// the node runs alone.
    #[arg(long, value_name = "URL")]
    nats: Option<String>,
    /// The fleet's name: nodes with the same NATS and name form one fleet.
    #[arg(long, default_value = "engram", requires = "nats")]
    fleet: String,
    /// Log in to NATS as this user, with the password --nats-password-file holds.
    #[arg(long, value_name = "NAME", requires_all = ["nats", "nats_password_file"])]
    nats_user: Option<String>,
    /// A file holding the NATS password (for --nats-user).
    #[arg(long, value_name = "FILE", requires = "nats_user")]
    nats_password_file: Option<PathBuf>,
    /// A file holding a NATS token to log in with.
    #[arg(long, value_name = "FILE", requires = "nats", conflicts_with_all = ["nats_user", "nats_nkey", "nats_creds"])]
    nats_token_file: Option<PathBuf>,
    /// A file holding a NATS user nkey seed (SU...) to log in with.
    #[arg(long, value_name = "FILE", requires = "nats", conflicts_with_all = ["nats_user", "nats_creds"])]
    nats_nkey: Option<PathBuf>,
    /// A NATS credentials file (user JWT and nkey seed) to log in with.
    #[arg(
        long,
        value_name = "FILE",
        requires = "nats",
        conflicts_with = "nats_user"
    )]
    nats_creds: Option<PathBuf>,
    /// Speak TLS to NATS, trusting servers this CA certificate (PEM file) signed.
    #[arg(long, value_name = "FILE", requires = "nats")]
    nats_ca: Option<PathBuf>,
    /// Where clients reach this node (HOST:PORT, or tls://HOST:PORT), as the fleet tells
    /// them (`engram fleet status`, the owner a write is sent to) [default: the TCP
    /// listener's address, tls:// with --tls; required when it listens on every
    /// interface].
    #[arg(long, value_name = "ADDRESS", requires = "nats")]
    fleet_address: Option<String>,
    /// Milliseconds a node in a fleet serves without confirming the fleet's policy;
    /// past it every call answers unavailable until it has caught up (100 to 600000).
    #[arg(long, default_value_t = engram_fleet::LEASE_DEFAULT.as_millis() as u64, requires = "nats",
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    fleet_lease_ms: u64,
    /// Milliseconds after which a world this node writes, and no write asked for since,
    /// is given up so that any node of the fleet may take it (0: kept while the node
    /// runs).
    #[arg(long, default_value_t = engram_fleet::IDLE_RELEASE_DEFAULT.as_millis() as u64, requires = "nats")]
    fleet_idle_release_ms: u64,
    /// Serve Prometheus metrics at http://ADDRESS/metrics, with /healthz and /readyz,
    /// on a listener of their own (port 0 picks a free port; the ready line names it).
    #[arg(long, value_name = "ADDRESS")]
    metrics: Option<String>,
    /// How the log (stderr) is written: text, or json (one object a line).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Calls that take longer than this many milliseconds are logged as slow calls.
    #[arg(long, default_value_t = SLOW_CALL_MS_DEFAULT)]
    slow_call_ms: u64,
    /// Milliseconds after new vectors went in before a fresh snapshot of the similarity
    /// index is written (ten times as long while what is new is under a tenth of it),
    /// so that a start after a crash loads it instead of rebuilding.
    #[arg(long, default_value_t = engram_server::VECTOR_SNAPSHOT_MS_DEFAULT)]
    vector_snapshot_ms: u64,
    /// Milliseconds the audit trail keeps each record; older records are deleted at
    /// start and as the trail is written. 0 keeps every record.
    #[arg(long, default_value_t = 0)]
    audit_retention_ms: u64,
}

#[derive(clap::Subcommand, Debug)]
enum Subcommand {
    /// Restore a backup (`engram backup DIR`) into a new data directory.
    ///
    /// Every file is checked against the backup's manifest, the restored store against its last
    /// commit, epoch, worlds and chain heads, and every chain is recomputed, before
    /// the node can serve it. The restored node makes its own node key at its first
    /// start. Exit 0 restored, 1 refused (the message says why; nothing is left to serve).
    Restore {
        /// The backup's directory (with manifest.json).
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// The new data directory (it must hold no store).
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

/// Reads the options from the flags, the environment and the configuration file; with
/// `--print-config` prints them. `Err` is the exit code.
fn arguments() -> Result<Arguments, ExitCode> {
    let command = settings::with_environment(Arguments::command());
    // A first reading finds the file (`--config`, or in the data directory); then the
    // file's values become defaults, and the flags and variables are read again over them.
    let first = command.clone().get_matches();
    if first.subcommand_name().is_some() {
        // A subcommand takes its own options, not the node's configuration.
        return Ok(Arguments::from_arg_matches(&first).unwrap_or_else(|error| error.exit()));
    }
    let data = first
        .get_one::<PathBuf>("data")
        .expect("data has a default");
    let (path, named) = match first.get_one::<PathBuf>("config") {
        Some(path) => (path.clone(), true),
        None => (data.join(settings::CONFIG_FILE), false),
    };
    let usage = |message: String| {
        eprintln!("engramd: {message}");
        ExitCode::from(2)
    };
    let file = settings::File::read(&path, named).map_err(usage)?;
    let command = match &file {
        Some(file) => {
            if !named && file.keys().contains("data") {
                return Err(usage(format!(
                    "{}: a data directory's own configuration cannot name another data directory; use --config",
                    file.path.display()
                )));
            }
            file.apply(command).map_err(usage)?
        }
        None => command,
    };
    let matches = command.clone().get_matches();
    let arguments = Arguments::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    if arguments.print_config {
        print!("{}", settings::render(&command, &matches, file.as_ref()));
        return Err(ExitCode::SUCCESS);
    }
    Ok(arguments)
}

/// How the node logs in to NATS, from its options, each secret read from its file. A
/// URL holding credentials is refused: they would show wherever the URL does (logs,
/// process lists), and the NATS client would not use them.
fn nats_auth(url: &str, arguments: &Arguments) -> Result<engram_fleet::Auth, String> {
    use engram_fleet::Auth;
    let shown = engram_fleet::shown_url(url);
    if shown != url {
        return Err(format!(
            "--nats {shown}: credentials in the URL would show in logs and process lists; \
             use --nats-user with --nats-password-file, --nats-token-file, --nats-nkey or \
             --nats-creds"
        ));
    }
    let secret = |path: &PathBuf, what: &str| {
        std::fs::read_to_string(path)
            .map(|text| text.trim().to_owned())
            .map_err(|error| {
                format!(
                    "cannot read the NATS {what} file {}: {error}",
                    path.display()
                )
            })
    };
    Ok(if let Some(user) = &arguments.nats_user {
        let file = arguments
            .nats_password_file
            .as_ref()
            .expect("clap requires --nats-password-file with --nats-user");
        Auth::UserPassword {
            user: user.clone(),
            password: secret(file, "password")?,
        }
    } else if let Some(file) = &arguments.nats_token_file {
        Auth::Token(secret(file, "token")?)
    } else if let Some(file) = &arguments.nats_nkey {
        let seed = secret(file, "nkey seed")?;
        // Checked here, so that a bad file is named, not found out at the connect.
        match nkeys::KeyPair::from_seed(&seed) {
            Ok(pair) if seed.starts_with("SU") => drop(pair),
            _ => {
                return Err(format!(
                    "the NATS nkey seed file {} does not hold a user nkey seed (one line, \
                     SU followed by 56 characters)",
                    file.display()
                ));
            }
        }
        Auth::NKey(seed)
    } else if let Some(file) = &arguments.nats_creds {
        Auth::Credentials(file.clone())
    } else {
        Auth::None
    })
}

/// `--nats-ca`, checked to hold a PEM certificate, so that a bad file is named, not
/// found out at the connect.
fn nats_ca(arguments: &Arguments) -> Result<Option<PathBuf>, String> {
    let Some(file) = &arguments.nats_ca else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(file)
        .map_err(|error| format!("cannot read the NATS CA file {}: {error}", file.display()))?;
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "the NATS CA file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            file.display()
        ));
    }
    Ok(Some(file.clone()))
}

fn main() -> ExitCode {
    let arguments = match arguments() {
        Ok(arguments) => arguments,
        Err(code) => return code,
    };
    if let Some(Subcommand::Restore { from, data }) = &arguments.command {
        return match engram_server::restore::restore(from, data) {
            Ok(restored) => {
                println!(
                    "restored {} atoms in {} worlds ({} chains verified) up to commit {} into {}",
                    restored.atoms,
                    restored.worlds,
                    restored.chains,
                    restored.last_commit,
                    data.display()
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("engramd: {error}");
                ExitCode::FAILURE
            }
        };
    }
    {
        use tracing_subscriber::filter::{LevelFilter, Targets};
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        use tracing_subscriber::{EnvFilter, Layer};
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        // async-nats traces its CONNECT line, password and token included: its log stops
        // at debug, whatever RUST_LOG asks (and is off unless RUST_LOG asks for it).
        let capped = Targets::new()
            .with_default(LevelFilter::TRACE)
            .with_target("async_nats", LevelFilter::DEBUG);
        let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
        let layer = match arguments.log_format {
            // Colour only for a person at a terminal; log files stay plain text.
            LogFormat::Text => layer
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .boxed(),
            LogFormat::Json => layer.json().flatten_event(true).boxed(),
        };
        tracing_subscriber::registry()
            .with(layer.with_filter(filter).with_filter(capped))
            .init();
    }
    let socket = (!arguments.no_socket).then(|| {
        arguments
            .socket
            .clone()
            .unwrap_or_else(|| arguments.data.join(SOCKET_FILE))
    });
    let (fleet_auth, nats_ca) = match &arguments.nats {
        Some(url) => {
            match nats_auth(url, &arguments).and_then(|auth| Ok((auth, nats_ca(&arguments)?))) {
                Ok(checked) => checked,
                Err(message) => {
                    eprintln!("engramd: {message}");
                    return ExitCode::from(2);
                }
            }
        }
        None => (engram_fleet::Auth::None, None),
    };
    let config = Config {
        data: arguments.data,
        listen: (!arguments.no_tcp).then_some(arguments.listen),
        tls: arguments.tls,
        insecure: arguments.insecure,
        socket,
        connections_max: arguments.connections_max,
        connections_per_address_max: arguments.connections_per_address_max,
        pre_auth_connections_max: arguments.pre_auth_connections_max,
        handshake_timeout: std::time::Duration::from_millis(arguments.handshake_timeout_ms),
        connection_unread_bytes_max: arguments.connection_unread_bytes_max,
        write_stall_timeout: std::time::Duration::from_millis(arguments.write_stall_timeout_ms),
        idle_timeout: std::time::Duration::from_millis(arguments.idle_timeout_ms),
        message_bytes_max: arguments.message_bytes_max,
        cache_bytes: arguments.cache_mib.saturating_mul(1024 * 1024),
        metrics: arguments.metrics,
        vector_snapshot_after: std::time::Duration::from_millis(arguments.vector_snapshot_ms),
        audit_retention: (arguments.audit_retention_ms > 0)
            .then(|| std::time::Duration::from_millis(arguments.audit_retention_ms)),
        fleet: match arguments.nats {
            Some(url) => Some(engram_fleet::Config {
                auth: fleet_auth,
                url,
                name: arguments.fleet,
                lease: std::time::Duration::from_millis(arguments.fleet_lease_ms),
                idle_release: std::time::Duration::from_millis(arguments.fleet_idle_release_ms),
                ca: nats_ca,
                address: arguments.fleet_address,
            }),
            None => None,
        },
        node_limits: NodeLimits {
            subscriptions_per_principal_max: arguments.subscriptions_per_principal_max,
            calls_in_flight_per_connection_max: arguments.calls_in_flight_max,
            reads_in_flight_per_connection_max: arguments.reads_in_flight_max,
            login_attempts_per_minute: arguments.login_attempts_per_minute,
            read_workers: arguments
                .read_workers
                .unwrap_or_else(engram_capabilities::limits::read_workers_default),
            slow_call: std::time::Duration::from_millis(arguments.slow_call_ms),
        },
    };
    if let Err(error) = validate_fleet_name(&config) {
        eprintln!("engramd: {error}");
        return ExitCode::from(2);
    }
    match engram_server::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("engramd: {error}");
            ExitCode::FAILURE
        }
    }
}

/// A fleet's name names its NATS bucket: letters, digits, `-` and `_`.
fn validate_fleet_name(config: &Config) -> Result<(), String> {
    let Some(fleet) = &config.fleet else {
        return Ok(());
    };
    let valid = !fleet.name.is_empty()
        && fleet.name.len() <= 64
        && (fleet.name.bytes()).all(|byte| byte.is_ascii_alphanumeric() || b"-_".contains(&byte));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "--fleet {:?}: a fleet's name is 1 to 64 letters, digits, '-' and '_'",
            fleet.name
        ))
    }
}
