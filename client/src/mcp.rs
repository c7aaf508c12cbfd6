//! `engram mcp`: engram's memory as Model Context Protocol tools and resources, for any
//! MCP host (over stdio, or streamable HTTP), through capabilities and nothing else.
//!
//! The bridge holds one world's capabilities — a reader, a writer, an observer, each
//! narrowed by the same restriction, or the one a token restores — and every tool call
//! goes through them: it can never do more than they allow. Which tools it lists
//! follows from what it holds (a reader: `ask`, `get`, `replay`, `check`, `diff`; a
//! writer: `remember`, `remember_batch`, `propose`), as do its resources (the world, with
//! its recent atoms, to a reader) and subscriptions (new atoms, to an observer).
//!
//! Cap'n Proto's RPC is single-threaded, MCP's server is not: the capabilities live on a
//! thread of their own (`Engram`), and each tool call is a job sent to it. A failed call
//! is a tool error whose text starts with engram's stable error code. When the node's
//! epoch moves on, a bridge that logged in with a key grafts again and retries once; one
//! that holds a token answers `staleEpoch`, which only a new token cures. When the
//! connection to the node is lost, the call connects again and is sent once more (writes
//! carry an idempotency key, so none is done twice). Calls that fail together acquire
//! the capabilities again once between them (`Engram::acquire_after`).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use engram_schema::ErrorCode;
use engram_schema::engram_capnp::{observer, world_reader, world_writer};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    Implementation, ListResourcesResult, PaginatedRequestParams, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, Resource, ResourceContents, ServerCapabilities,
    ServerConfig, SubscriptionFilter,
};
use rmcp::service::{RequestContext, SubscriptionContext};
use rmcp::{ErrorData, RoleServer, ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::error::ClientError;
use crate::types::{Filter, NewAtom, kind_from_name, state_from_name};

/// The capabilities the bridge holds, all of one world.
#[derive(Clone, Default)]
pub struct Capabilities {
    pub world: String,
    pub reader: Option<world_reader::Client>,
    pub writer: Option<world_writer::Client>,
    pub observer: Option<observer::Client>,
}

impl Capabilities {
    fn holds(&self) -> Holds {
        Holds {
            reader: self.reader.is_some(),
            writer: self.writer.is_some(),
            observer: self.observer.is_some(),
        }
    }
}

/// Which capabilities the bridge holds: what it offers, known on the MCP side.
#[derive(Clone, Copy)]
struct Holds {
    reader: bool,
    writer: bool,
    observer: bool,
}

/// A future on the engram thread (not `Send`).
pub type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// Gets the capabilities on a new connection: login, graft and narrow for a bridge that
/// holds a key, restore for one that holds a token. Run at start, after the epoch moved
/// on, and after the connection was lost.
pub type Acquire = Box<dyn Fn() -> LocalFuture<Result<Capabilities, ClientError>>>;

/// The most atoms one tool call returns, and one resource read shows.
const ATOMS_PER_CALL_MAX: u32 = 100;
const RECENT_ATOMS: u32 = 20;
/// Jobs waiting for the engram thread before a tool call waits to send its own.
const JOBS_QUEUED_MAX: usize = 64;
/// Calls the engram thread runs at once; the next waits (and the queue behind it fills,
/// and tool calls wait to be queued), so a host that floods the bridge holds neither
/// unbounded memory nor the node connection's every call in flight.
const CALLS_IN_FLIGHT_MAX: usize = 32;

/// Work for the engram thread: a call (bounded by `CALLS_IN_FLIGHT_MAX`), or a watch
/// that lasts as long as its subscription (bounded by the node's subscriptions per
/// principal).
enum Job {
    Call(Box<dyn FnOnce(Rc<Engram>) -> LocalFuture<()> + Send>),
    Watch(Box<dyn FnOnce(Rc<Engram>) -> LocalFuture<()> + Send>),
}

/// The engram side: the capabilities, on the thread that runs Cap'n Proto.
struct Engram {
    held: RefCell<Capabilities>,
    /// Counts the acquisitions: a call that failed with capabilities of an earlier one
    /// takes the newer ones instead of acquiring again.
    generation: Cell<u64>,
    /// One acquisition at a time: calls that fail together (an epoch advance, a lost
    /// connection) log in once between them, not once each.
    acquiring: tokio::sync::Mutex<()>,
    acquire: Acquire,
    /// Whether acquiring again cures `staleEpoch`: a key grafts in the new epoch; a
    /// token's epoch never comes back (and restoring it would only spend the peer's
    /// login rate).
    grafts: bool,
}

impl Engram {
    /// Runs `call` with the capabilities. After `staleEpoch` (which the node answers
    /// before doing anything), a keyed bridge grafts in the new epoch and calls once
    /// more. After a lost connection it connects again and calls once more: reads
    /// change nothing, and writes carry an idempotency key, so a call the node had
    /// done is answered again rather than done twice. If the node is still away, the
    /// error is answered and the next call tries again.
    async fn with<F>(&self, call: F) -> Result<Value, ClientError>
    where
        F: Fn(Capabilities) -> LocalFuture<Result<Value, ClientError>>,
    {
        let (held, generation) = (self.held.borrow().clone(), self.generation.get());
        match call(held).await {
            Err(error) if self.grafts && error.code() == Some(ErrorCode::StaleEpoch) => {
                call(self.acquire_after(generation).await?).await
            }
            Err(error) if disconnected(&error) => call(self.acquire_after(generation).await?).await,
            answered => answered,
        }
    }

    /// Capabilities newer than those of acquisition `failed`: acquired now, or by
    /// another call while this one waited for its turn.
    async fn acquire_after(&self, failed: u64) -> Result<Capabilities, ClientError> {
        let _turn = self.acquiring.lock().await;
        if self.generation.get() == failed {
            let held = (self.acquire)().await?;
            *self.held.borrow_mut() = held;
            self.generation.set(failed + 1);
        }
        Ok(self.held.borrow().clone())
    }
}

/// Whether the call failed because the connection to the node was lost.
fn disconnected(error: &ClientError) -> bool {
    matches!(error, ClientError::Rpc(error) if error.kind == capnp::ErrorKind::Disconnected)
}

/// The MCP side: what a tool call sends its job to.
#[derive(Clone)]
pub struct Bridge {
    jobs: mpsc::Sender<Job>,
    world: String,
    holds: Holds,
    tool_router: ToolRouter<Bridge>,
}

/// Starts the engram thread, where `acquire` (made there by `make`) gets the
/// capabilities, and returns the bridge that serves them over MCP. `grafts`: whether
/// acquiring them again cures `staleEpoch` (true for a key, false for a token).
pub fn start<M>(make: M, grafts: bool) -> Result<Bridge, ClientError>
where
    M: FnOnce() -> Acquire + Send + 'static,
{
    let (jobs, mut queue) = mpsc::channel::<Job>(JOBS_QUEUED_MAX);
    let (ready, started) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("engram".into())
        .spawn(move || {
            let ran = crate::run_local(async move {
                let acquire = make();
                let held = match acquire().await {
                    Ok(held) => held,
                    Err(error) => {
                        let _ = ready.send(Err(error));
                        return;
                    }
                };
                let holds = held.holds();
                let _ = ready.send(Ok((held.world.clone(), holds)));
                let engram = Rc::new(Engram {
                    held: RefCell::new(held),
                    generation: Cell::new(0),
                    acquiring: tokio::sync::Mutex::new(()),
                    acquire,
                    grafts,
                });
                let calls = std::sync::Arc::new(tokio::sync::Semaphore::new(CALLS_IN_FLIGHT_MAX));
                while let Some(job) = queue.recv().await {
                    match job {
                        Job::Call(call) => {
                            let Ok(permit) = calls.clone().acquire_owned().await else {
                                break;
                            };
                            let running = call(engram.clone());
                            tokio::task::spawn_local(async move {
                                running.await;
                                drop(permit);
                            });
                        }
                        Job::Watch(watch) => {
                            tokio::task::spawn_local(watch(engram.clone()));
                        }
                    }
                }
            });
            if let Err(error) = ran {
                eprintln!("engram mcp: the engram thread could not start: {error}");
            }
        })
        .map_err(|error| ClientError::InvalidInput(format!("starting a thread: {error}")))?;
    let (world, holds) = started.recv().map_err(|_| {
        ClientError::InvalidInput("the engram thread ended before connecting".into())
    })??;
    let mut tool_router = Bridge::tool_router();
    if !holds.reader {
        for name in ["ask", "get", "replay", "check", "diff"] {
            tool_router.remove_route(name);
        }
    }
    if !holds.writer {
        for name in ["remember", "remember_batch", "propose"] {
            tool_router.remove_route(name);
        }
    }
    Ok(Bridge {
        jobs,
        holds,
        world,
        tool_router,
    })
}

impl Bridge {
    /// Serves MCP on standard input and output until the host closes them.
    pub async fn serve_stdio(self) -> Result<(), ClientError> {
        use rmcp::ServiceExt;
        let running = self
            .serve(rmcp::transport::stdio())
            .await
            .map_err(|error| {
                ClientError::InvalidInput(format!("starting MCP on stdio: {error}"))
            })?;
        running
            .waiting()
            .await
            .map_err(|error| ClientError::InvalidInput(format!("serving MCP on stdio: {error}")))?;
        Ok(())
    }

    /// Serves MCP as streamable HTTP at `http://ADDRESS/mcp` until interrupted (see
    /// [`http_address`]).
    pub async fn serve_http(self, socket: std::net::SocketAddr) -> Result<(), ClientError> {
        use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
        use rmcp::transport::streamable_http_server::{
            StreamableHttpServerConfig, StreamableHttpService,
        };
        let address = socket.to_string();
        let listener = tokio::net::TcpListener::bind(socket)
            .await
            .map_err(|source| ClientError::Connect {
                endpoint: address.to_owned(),
                source,
            })?;
        let bound = listener
            .local_addr()
            .map_err(|source| ClientError::Connect {
                endpoint: address.to_owned(),
                source,
            })?;
        let service = StreamableHttpService::new(
            move || Ok(self.clone()),
            std::sync::Arc::new(LocalSessionManager::default()),
            StreamableHttpServerConfig::default(),
        );
        let router = axum::Router::new().nest_service("/mcp", service);
        // The ready line is a contract for scripts and tests: it names the bound address.
        eprintln!("engram mcp ready http://{bound}/mcp");
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .map_err(|source| ClientError::Connect {
                endpoint: address.to_owned(),
                source,
            })
    }
}

/// The address `--http` names, if the bridge may serve it: loopback only, because
/// whoever reaches the endpoint holds the bridge's capabilities with no other credential.
pub fn http_address(address: &str) -> Result<std::net::SocketAddr, ClientError> {
    let socket: std::net::SocketAddr = address.parse().map_err(|_| {
        ClientError::InvalidInput(format!(
            "--http {address:?} is not HOST:PORT (an IP address)"
        ))
    })?;
    if !socket.ip().is_loopback() {
        return Err(ClientError::InvalidInput(format!(
            "--http {address}: the bridge serves loopback addresses only (127.0.0.1, ::1): \
             its endpoint asks for no credential"
        )));
    }
    Ok(socket)
}

/// A tool's answer: the JSON text, or the error's text led by its stable code.
fn answer(result: Result<Value, ClientError>) -> Result<String, String> {
    result.map(|value| value.to_string()).map_err(error_text)
}

/// `code: message`, the code engram's (or the nearest one for a failure of the bridge).
fn error_text(error: ClientError) -> String {
    match error {
        ClientError::Node { code, message } => format!("{code}: {message}"),
        ClientError::InvalidInput(message) => format!("{}: {message}", ErrorCode::InvalidArgument),
        other => format!("{}: {other}", ErrorCode::Unavailable),
    }
}

fn not_held(what: &str) -> ClientError {
    ClientError::Node {
        code: ErrorCode::PermissionDenied,
        message: format!("this bridge holds no {what} capability"),
    }
}

impl Bridge {
    /// Runs `call` on the engram thread with the capabilities.
    async fn run<F>(&self, call: F) -> Result<String, String>
    where
        F: Fn(Capabilities) -> LocalFuture<Result<Value, ClientError>> + Send + 'static,
    {
        let (answered, answer_here) = oneshot::channel();
        let job = Job::Call(Box::new(move |engram: Rc<Engram>| {
            Box::pin(async move {
                let _ = answered.send(engram.with(call).await);
            })
        }));
        let gone = || {
            format!(
                "{}: the bridge's engram thread has stopped",
                ErrorCode::Unavailable
            )
        };
        self.jobs.send(job).await.map_err(|_| gone())?;
        answer(answer_here.await.map_err(|_| gone())?)
    }

    /// Runs `call` on the engram thread with the reader, if the bridge holds one.
    async fn read<F>(&self, call: F) -> Result<String, String>
    where
        F: Fn(world_reader::Client) -> LocalFuture<Result<Value, ClientError>> + Send + 'static,
    {
        self.run(move |held| match held.reader {
            Some(reader) => call(reader),
            None => Box::pin(async { Err(not_held("reader")) }),
        })
        .await
    }

    fn resource_uri(&self) -> String {
        format!("engram://worlds/{}", self.world)
    }
}

/// One atom to remember.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
pub struct AtomInput {
    /// What the atom says: one fact, decision, observation... in a sentence or two.
    pub text: String,
    /// observation (default), fact, decision, plan, constraint, correction, message,
    /// question or preference.
    #[serde(default)]
    pub kind: Option<String>,
    /// Labels that scope the atom (e.g. a topic or a team); a narrowed capability only
    /// writes the labels it allows.
    #[serde(default)]
    pub labels: Vec<String>,
    /// From 0 to 1 (default 0.5): how much the atom matters.
    #[serde(default)]
    pub importance: Option<f32>,
    /// From 0 to 1 (default 1): how sure the writer is.
    #[serde(default)]
    pub confidence: Option<f32>,
    /// For a constraint: the words or phrases a plan must not contain.
    #[serde(default)]
    pub forbids: Vec<String>,
    /// Ids (hex) of earlier atoms this one replaces.
    #[serde(default)]
    pub supersedes: Vec<String>,
}

impl AtomInput {
    fn atom(&self, proposed: bool) -> Result<NewAtom, ClientError> {
        let kind = kind_from_name(self.kind.as_deref().unwrap_or("observation"))?;
        let mut atom = NewAtom::new(kind, self.text.clone());
        atom.labels = self.labels.clone();
        atom.importance = self.importance.unwrap_or(atom.importance);
        atom.confidence = self.confidence.unwrap_or(atom.confidence);
        atom.forbids = self.forbids.clone();
        atom.proposed = proposed;
        for id in &self.supersedes {
            atom = atom.supersedes(atom_id(id)?);
        }
        Ok(atom)
    }
}

fn atom_id(id: &str) -> Result<[u8; 32], ClientError> {
    hex::decode(id)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| {
            ClientError::InvalidInput(format!("{id:?} is not an atom id (64 hex digits)"))
        })
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RememberBatchInput {
    /// The atoms, written together: all of them or none.
    pub atoms: Vec<AtomInput>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
pub struct AskInput {
    /// Words to search for (ranked by relevance); empty: the newest atoms.
    #[serde(default)]
    pub text: String,
    /// Only these kinds.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Only atoms with one of these labels.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Only atoms in these lifecycle states (asserted, proposed, approved, rejected,
    /// deprecated, superseded, retracted); default: current knowledge.
    #[serde(default)]
    pub states: Vec<String>,
    /// Only atoms at least this important (0 to 1).
    #[serde(default)]
    pub min_importance: Option<f32>,
    /// Rank by similarity to this embedding too (worlds that hold vectors).
    #[serde(default)]
    pub vector: Vec<f32>,
    /// At most this many atoms (default 20, at most 100).
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct GetInput {
    /// The atom's id (64 hex digits).
    pub id: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ReplayInput {
    /// The first commit to return (default 0: from the beginning).
    #[serde(default)]
    pub from_commit: u64,
    /// At most this many atoms (default 20, at most 100).
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct CheckInput {
    /// The plan, in words: what the agent is about to do.
    pub plan: String,
    /// Only constraints with one of these labels (default: every constraint).
    #[serde(default)]
    pub labels: Vec<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct DiffInput {
    /// The commit to compare from (its state before).
    pub from_commit: u64,
    /// The commit to compare to (0: now).
    #[serde(default)]
    pub to_commit: u64,
    /// At most this many atoms (default 20, at most 100).
    #[serde(default)]
    pub limit: Option<u32>,
}

fn limit(asked: Option<u32>) -> u32 {
    asked.unwrap_or(RECENT_ATOMS).clamp(1, ATOMS_PER_CALL_MAX)
}

fn atoms_json(atoms: &[crate::types::AtomView]) -> Value {
    Value::Array(atoms.iter().map(|atom| atom.to_json()).collect())
}

#[tool_router]
impl Bridge {
    #[tool(
        description = "Remember one atom of knowledge in the world (durable when it returns). \
        Returns its receipt: id, commit, seq."
    )]
    async fn remember(&self, Parameters(input): Parameters<AtomInput>) -> Result<String, String> {
        self.write(vec![input], false).await
    }

    #[tool(description = "Remember several atoms at once, all or none. Returns their receipts.")]
    async fn remember_batch(
        &self,
        Parameters(input): Parameters<RememberBatchInput>,
    ) -> Result<String, String> {
        self.write(input.atoms, false).await
    }

    #[tool(
        description = "Propose an atom: written, but not current knowledge until someone \
        with the approve right approves it. Returns its receipt."
    )]
    async fn propose(&self, Parameters(input): Parameters<AtomInput>) -> Result<String, String> {
        self.write(vec![input], true).await
    }

    #[tool(
        description = "Search the world's memory: by words, kinds, labels, states, \
        importance or an embedding. Returns the matching atoms, best first."
    )]
    async fn ask(&self, Parameters(input): Parameters<AskInput>) -> Result<String, String> {
        let filter = (|| -> Result<Filter, ClientError> {
            Ok(Filter {
                text: input.text.clone(),
                kinds: input
                    .kinds
                    .iter()
                    .map(|kind| kind_from_name(kind))
                    .collect::<Result<_, _>>()?,
                labels: input.labels.clone(),
                states: input
                    .states
                    .iter()
                    .map(|state| state_from_name(state))
                    .collect::<Result<_, _>>()?,
                min_importance: input.min_importance.unwrap_or(0.0),
                vector: input.vector.clone(),
                limit: limit(input.limit),
                ..Filter::default()
            })
        })()
        .map_err(error_text)?;
        self.read(move |reader| {
            let filter = filter.clone();
            Box::pin(async move { Ok(atoms_json(&crate::ask(&reader, &filter).await?)) })
        })
        .await
    }

    #[tool(description = "Read one atom by its id.")]
    async fn get(&self, Parameters(input): Parameters<GetInput>) -> Result<String, String> {
        let id = atom_id(&input.id).map_err(error_text)?;
        self.read(move |reader| {
            Box::pin(async move { Ok(crate::get(&reader, &id).await?.to_json()) })
        })
        .await
    }

    #[tool(
        description = "Read the world's atoms in commit order, from a commit on. Returns \
        the atoms and the commit to continue from."
    )]
    async fn replay(&self, Parameters(input): Parameters<ReplayInput>) -> Result<String, String> {
        let (from, limit) = (input.from_commit, limit(input.limit));
        self.read(move |reader| {
            Box::pin(async move {
                let (atoms, next) = crate::replay(&reader, from, limit).await?;
                Ok(json!({"atoms": atoms_json(&atoms), "nextCommit": next}))
            })
        })
        .await
    }

    #[tool(
        description = "Check a plan against the world's constraints before acting on it. \
        Returns the constraints it would violate (none: go ahead)."
    )]
    async fn check(&self, Parameters(input): Parameters<CheckInput>) -> Result<String, String> {
        self.read(move |reader| {
            let (plan, labels) = (input.plan.clone(), input.labels.clone());
            Box::pin(async move {
                let checked = crate::check(&reader, &plan, &labels).await?;
                let violations: Vec<Value> = checked
                    .violations
                    .iter()
                    .map(|violation| violation.to_json())
                    .collect();
                Ok(json!({"violations": violations, "warning": checked.warning}))
            })
        })
        .await
    }

    #[tool(
        description = "What changed in the world between two commits: the atoms written \
        or moved to another state. Returns them and the commit to continue from."
    )]
    async fn diff(&self, Parameters(input): Parameters<DiffInput>) -> Result<String, String> {
        let (from, to, limit) = (input.from_commit, input.to_commit, limit(input.limit));
        self.read(move |reader| {
            Box::pin(async move {
                let (atoms, next) = crate::diff(&reader, from, to, limit).await?;
                Ok(json!({"atoms": atoms_json(&atoms), "nextCommit": next}))
            })
        })
        .await
    }
}

impl Bridge {
    async fn write(&self, inputs: Vec<AtomInput>, proposed: bool) -> Result<String, String> {
        let atoms = inputs
            .iter()
            .map(|input| input.atom(proposed))
            .collect::<Result<Vec<_>, _>>()
            .map_err(error_text)?;
        // One key for every attempt of this tool call (see `Engram::with`).
        let key = crate::IdempotencyKey::random().map_err(error_text)?;
        self.run(move |held| {
            let (atoms, key) = (atoms.clone(), key.clone());
            Box::pin(async move {
                let writer = held.writer.ok_or_else(|| not_held("writer"))?;
                let remembered = crate::remember_keyed(&writer, &atoms, &key).await?;
                Ok(Value::Array(
                    remembered
                        .receipts
                        .iter()
                        .map(|receipt| receipt.to_json())
                        .collect(),
                ))
            })
        })
        .await
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Bridge {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder().enable_tools();
        let Holds {
            reader: reads,
            observer: observes,
            ..
        } = self.holds;
        let capabilities = if reads && observes {
            capabilities
                .enable_resources()
                .enable_resources_subscribe()
                .build()
        } else if reads {
            capabilities.enable_resources().build()
        } else {
            capabilities.build()
        };
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new("engram", env!("CARGO_PKG_VERSION")))
            .with_instructions(format!(
                "engram: durable, shared memory for agents, in world {:?}. Remember what you \
                 learn (facts, decisions, constraints); ask before you act; check a plan \
                 against the world's constraints. Every call is limited to what this \
                 bridge's capability allows; a refused call's text starts with its code \
                 (permissionDenied, staleEpoch, invalidArgument, resourceExhausted, ...).",
                self.world
            ))
    }

    async fn call_tool(
        &self,
        request: rmcp::model::CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, ErrorData> {
        let call = rmcp::handler::server::tool::ToolCallContext::new(self, request, context);
        let mut response = self.tool_router.call(call).await?;
        // Arguments that do not fit the tool's schema: rmcp says so in a tool error of
        // its own words; it is led by engram's code, like every refusal.
        if let rmcp::model::CallToolResponse::Complete(result) = &mut response
            && result.is_error == Some(true)
        {
            for block in &mut result.content {
                if let rmcp::model::ContentBlock::Text(text) = block
                    && text.text.starts_with("failed to deserialize parameters:")
                {
                    text.text = format!(
                        "{}: the arguments do not fit the tool's input schema ({})",
                        ErrorCode::InvalidArgument,
                        text.text
                    );
                }
            }
        }
        Ok(response)
    }

    async fn list_resources(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let mut resources = Vec::new();
        if self.holds.reader {
            let mut resource = Resource::new(self.resource_uri(), self.world.clone());
            resource.description = Some(format!("The newest atoms of world {}", self.world));
            resource.mime_type = Some("application/json".into());
            resources.push(resource);
        }
        Ok(ListResourcesResult::with_all_items(resources).with_ttl_ms(0))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        if request.uri != self.resource_uri() || !self.holds.reader {
            return Err(ErrorData::resource_not_found(
                format!(
                    "no resource {:?}; this bridge serves {}",
                    request.uri,
                    self.resource_uri()
                ),
                None,
            ));
        }
        let text = self
            .read(|reader| {
                Box::pin(async move {
                    let filter = Filter {
                        limit: RECENT_ATOMS,
                        ..Filter::default()
                    };
                    Ok(atoms_json(&crate::ask(&reader, &filter).await?))
                })
            })
            .await
            .map_err(|text| ErrorData::internal_error(text, None))?;
        let mut contents = ResourceContents::text(text, request.uri);
        if let ResourceContents::TextResourceContents { mime_type, .. } = &mut contents {
            *mime_type = Some("application/json".into());
        }
        Ok(ReadResourceResult::new(vec![contents])
            .with_ttl_ms(0)
            .into())
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        if !(self.holds.reader && self.holds.observer) {
            return None;
        }
        let uri = self.resource_uri();
        let mut accepted = SubscriptionFilter::new();
        accepted.resource_subscriptions = requested.resource_subscriptions.as_ref().map(|uris| {
            uris.iter()
                .filter(|&requested| *requested == uri)
                .cloned()
                .collect()
        });
        Some(accepted)
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        let uri = self.resource_uri();
        let wanted = context
            .accepted()
            .resource_subscriptions
            .as_ref()
            .is_some_and(|uris| uris.contains(&uri));
        if !wanted {
            context.cancelled().await;
            return Ok(());
        }
        // New atoms arrive from the observer on the engram thread; each batch is one
        // `notifications/resources/updated`.
        let (updated, mut updates) = mpsc::channel::<Result<(), String>>(1);
        let (stop, stopped) = oneshot::channel::<()>();
        let job = Job::Watch(Box::new(move |engram: Rc<Engram>| {
            Box::pin(async move { watch(engram, updated, stopped).await })
        }));
        self.jobs.send(job).await.map_err(|_| {
            ErrorData::internal_error("the bridge's engram thread has stopped", None)
        })?;
        let ended = loop {
            tokio::select! {
                () = context.cancelled() => break Ok(()),
                update = updates.recv() => match update {
                    Some(Ok(())) => {
                        if context.sink().notify_resource_updated(uri.clone()).await.is_err() {
                            break Ok(());
                        }
                    }
                    Some(Err(text)) => break Err(ErrorData::internal_error(text, None)),
                    None => break Ok(()),
                },
            }
        };
        let _ = stop.send(());
        ended
    }
}

/// Watches the world for new atoms (from now on) until `stopped`, sending `updated` a
/// signal once it stands and for each batch (coalesced while one waits), or the error
/// that ended it.
async fn watch(
    engram: Rc<Engram>,
    updated: mpsc::Sender<Result<(), String>>,
    stopped: oneshot::Receiver<()>,
) {
    // From now on: what is already stored is what reading the resource shows. Read
    // through `with`, which acquires the capabilities again if they are stale or their
    // connection was lost.
    let from = engram
        .with(|held| {
            Box::pin(async move {
                let reader = held.reader.ok_or_else(|| not_held("reader"))?;
                let generation = crate::generation(&reader).await?;
                Ok(Value::from(generation.node_commit))
            })
        })
        .await
        .map(|commit| commit.as_u64().unwrap_or_default());
    let Some(observer) = engram.held.borrow().observer.clone() else {
        let _ = updated.send(Err(error_text(not_held("observer")))).await;
        return;
    };
    let watching = async {
        let mut watch = crate::watch::subscribe(&observer, &Filter::default(), from?).await?;
        // One update as soon as the subscription stands: an atom committed after the
        // host's subscription was acknowledged and before this one began is covered
        // by it (the host reads the resource again, and sees it).
        let _ = updated.try_send(Ok(()));
        while let Some(event) = watch.next().await {
            match event {
                crate::watch::WatchEvent::Atoms(_) => {
                    // A signal already waiting says the same.
                    let _ = updated.try_send(Ok(()));
                }
                crate::watch::WatchEvent::End { code, message } => {
                    let code = code.map_or(ErrorCode::Unavailable, |code| code);
                    return Err(ClientError::Node { code, message });
                }
            }
        }
        Ok::<(), ClientError>(())
    };
    tokio::select! {
        _ = stopped => {}
        watched = watching => {
            if let Err(error) = watched {
                let _ = updated.send(Err(error_text(error))).await;
            }
        }
    }
}
