//! The metrics listener (`engramd --metrics ADDRESS`): Prometheus' text format at
//! `/metrics`, `/healthz` (the process answers) and `/readyz` (the node serves calls,
//! in touch with its fleet if in one, can write, and both indexes cover every world)
//! over plain HTTP, on a thread and runtime of its own,
//! so a scrape never waits on the RPC thread and no scraper slows a call.
//!
//! Counters and histograms are recorded where things happen (the `metrics` facade,
//! a no-op without `--metrics`); what is a state (the epoch, the indexes' lag, the
//! store's size) is read at each scrape.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use engram_store::{Store, TextIndex, VectorIndex};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::ServerError;

/// HTTP connections the listener serves at once; more wait to be accepted.
pub const METRICS_CONNECTIONS_MAX: usize = 16;
/// How long a metrics connection may last, from accept, before it is closed: a total
/// deadline, not a timer each byte resets, so that neither idle connections nor ones
/// trickling a byte at a time keep the places above from scrapers (a scrape takes
/// milliseconds; a scraper keeping its connection alive connects again).
pub const METRICS_CONNECTION_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// Buckets of the latency histograms (seconds): from 100 µs to 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];
/// Buckets of the write groups' sizes (requests and atoms).
const SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, 4096.0, 16384.0,
];

/// What a scrape reads besides the recorded metrics.
pub struct Observed {
    pub store: Store,
    pub vectors: Arc<VectorIndex>,
    pub texts: Arc<TextIndex>,
    /// The data directory, whose files are the store's size.
    pub data: PathBuf,
    /// In a fleet, when the node last confirmed the fleet's policy.
    pub fleet: Arc<engram_capabilities::fleet::FleetHealth>,
    /// The store's last commit when the node started: `/readyz` waits for the indexes
    /// to cover what the node held then.
    pub start_commit: u64,
}

/// The listener, bound and serving on its thread until [`Metrics::stop`].
pub struct Metrics {
    pub address: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Metrics {
    /// Installs the process's metrics recorder and serves it on `address`.
    pub fn start(address: &str, observed: Observed) -> Result<Metrics, ServerError> {
        let listen_error = |source| ServerError::Listen {
            address: format!("{address} (--metrics)"),
            source,
        };
        let listener = std::net::TcpListener::bind(address).map_err(listen_error)?;
        listener.set_nonblocking(true).map_err(listen_error)?;
        let bound = listener.local_addr().map_err(listen_error)?;
        let handle = recorder().map_err(|error| {
            listen_error(std::io::Error::other(format!(
                "installing the metrics recorder: {error}"
            )))
        })?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("engram-metrics".into())
            .spawn(move || serve(listener, handle, Arc::new(observed), stopped))
            .map_err(listen_error)?;
        Ok(Metrics {
            address: bound,
            stop,
            thread,
        })
    }

    /// Stops serving and waits for the thread.
    pub fn stop(self) {
        let _ = self.stop.send(());
        if self.thread.join().is_err() {
            tracing::error!("the metrics thread panicked");
        }
    }
}

fn recorder() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Prefix("engram_write_group_".into()), SIZE_BUCKETS)?
        .install_recorder()
}

fn serve(
    listener: std::net::TcpListener,
    handle: PrometheusHandle,
    observed: Arc<Observed>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "the metrics listener has no runtime; it serves nothing");
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(%error, "the metrics listener failed; it serves nothing");
                return;
            }
        };
        let ready = observed.clone();
        let router = Router::new()
            .route(
                "/metrics",
                get(move || {
                    let (handle, observed) = (handle.clone(), observed.clone());
                    async move {
                        // Reading the store and the indexes is blocking work.
                        tokio::task::spawn_blocking(move || {
                            observed.record_states();
                            handle.run_upkeep();
                            handle.render()
                        })
                        .await
                        .unwrap_or_default()
                    }
                }),
            )
            .route("/healthz", get(|| async { "alive\n" }))
            .route(
                "/readyz",
                get(move || {
                    let observed = ready.clone();
                    async move {
                        match tokio::task::spawn_blocking(move || observed.readiness()).await {
                            Ok(Ok(())) => (StatusCode::OK, "ready\n".to_owned()),
                            Ok(Err(why)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                            Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "failed\n".to_owned()),
                        }
                    }
                }),
            );
        let listener = Bounded {
            listener,
            slots: Arc::new(Semaphore::new(METRICS_CONNECTIONS_MAX)),
        };
        tokio::select! {
            served = axum::serve(listener, router) => {
                if let Err(error) = served {
                    tracing::error!(%error, "the metrics listener failed");
                }
            }
            _ = stopped => {}
        }
    });
}

/// The lag of each index, in commits: over every world, how far the world's last
/// commit (or `up_to`, if lower) is past what the index covers (0: the index answers for
/// every atom up to there). In a fleet, where a node's commits advance by
/// `COMMIT_SLOTS` a group, in such strides (about one group each).
struct Lag {
    vector: u64,
    text: u64,
}

impl Observed {
    fn lag(&self, up_to: u64) -> Result<Lag, engram_store::StoreError> {
        let view = self.store.read()?;
        let mut lag = Lag { vector: 0, text: 0 };
        for world in view.worlds()? {
            if world.atoms == 0 {
                continue;
            }
            let last = view.world_last_commit(&world.name)?.min(up_to);
            lag.text = lag
                .text
                .max(last.saturating_sub(self.texts.covered(&world.name)));
            // A world without vectors has nothing for the vector index to cover.
            if world.dimension > 0 {
                lag.vector = lag
                    .vector
                    .max(last.saturating_sub(self.vectors.covered(&world.name)));
            }
        }
        if self.fleet.age().is_some() {
            let stride = engram_store::COMMIT_SLOTS;
            lag.text = lag.text.div_ceil(stride);
            lag.vector = lag.vector.div_ceil(stride);
        }
        Ok(lag)
    }

    /// Sets the gauges of states: the epoch, the last commit, each index's lag, the
    /// store's bytes on disk.
    fn record_states(&self) {
        match self.store.read() {
            Ok(view) => {
                metrics::gauge!("engram_last_commit").set(view.last_commit() as f64);
                if let Ok(epoch) = view.epoch() {
                    metrics::gauge!("engram_epoch").set(epoch.number as f64);
                }
            }
            Err(error) => tracing::warn!(%error, "metrics: the store could not be read"),
        }
        if let Ok(lag) = self.lag(u64::MAX) {
            metrics::gauge!("engram_index_lag_commits", "index" => "vector").set(lag.vector as f64);
            metrics::gauge!("engram_index_lag_commits", "index" => "text").set(lag.text as f64);
        }
        let store = self.data.join(crate::STORE_FILE);
        // The store's file, its journal (beside it), the audit trail.
        let bytes: u64 = [
            store.with_extension("journal"),
            store,
            self.data.join(crate::AUDIT_FILE),
        ]
        .iter()
        .filter_map(|file| std::fs::metadata(file).ok())
        .map(|metadata| metadata.len())
        .sum();
        metrics::gauge!("engram_store_bytes").set(bytes as f64);
        if let Some(age) = self.fleet.age() {
            metrics::gauge!("engram_fleet_confirmation_age_seconds").set(age);
            metrics::gauge!("engram_fleet_owned_worlds").set(self.fleet.owned() as f64);
            // World names are of a few plain characters: no label escapes needed.
            for (world, lag) in self.fleet.lags() {
                metrics::gauge!("engram_fleet_stream_lag_messages", "world" => world)
                    .set(lag as f64);
            }
        }
    }

    /// Ready: the node serves calls (in a fleet, it confirmed the fleet's policy within
    /// its lease and holds what each world's stream held when it began following it),
    /// it can write, the store reads, and both indexes cover what it held at its start.
    fn readiness(&self) -> Result<(), String> {
        self.fleet.check().map_err(|why| {
            format!("not ready: this node is not in touch with its fleet ({why})")
        })?;
        let catching_up = self.fleet.catching_up();
        if let Some(world) = catching_up.first() {
            return Err(format!(
                "not ready: catching up {} world stream(s) of the fleet to where they stood \
                 when this node began following them ({world:?} among them)",
                catching_up.len()
            ));
        }
        if let Some(why) = self.store.write_failure() {
            return Err(format!(
                "not ready: writing failed ({why}); every write fails until the node restarts"
            ));
        }
        // Only what the node held at its start: an index a write or two behind (for
        // milliseconds, as every write leaves it) is a metric, not a reason to route
        // calls elsewhere; asks answer from the store for what it has not covered yet.
        let lag = self
            .lag(self.start_commit)
            .map_err(|error| format!("not ready: the store cannot be read: {error}"))?;
        if lag.vector > 0 || lag.text > 0 {
            return Err(format!(
                "not ready: the indexes are catching up with what the node held at its \
                 start (vector {} commits behind, text {})",
                lag.vector, lag.text
            ));
        }
        Ok(())
    }
}

/// The listener with at most [`METRICS_CONNECTIONS_MAX`] connections open: a peer that
/// holds connections takes no more than those, and only from this listener.
struct Bounded {
    listener: tokio::net::TcpListener,
    slots: Arc<Semaphore>,
}

impl axum::serve::Listener for Bounded {
    type Io = Slotted;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Slotted, SocketAddr) {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    let deadline = Box::pin(tokio::time::sleep(METRICS_CONNECTION_DEADLINE));
                    return (
                        Slotted {
                            stream,
                            _slot: slot,
                            deadline,
                        },
                        peer,
                    );
                }
                // Out of descriptors, or the peer went away: try again shortly.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// A connection holding its place until it closes, or [`METRICS_CONNECTION_DEADLINE`]
/// after it was accepted.
struct Slotted {
    stream: tokio::net::TcpStream,
    _slot: OwnedSemaphorePermit,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl tokio::io::AsyncRead for Slotted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        buffer: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::future::Future;
        let this = &mut *self;
        if this.deadline.as_mut().poll(context).is_ready() {
            return std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the metrics connection outlived its deadline",
            )));
        }
        std::pin::Pin::new(&mut this.stream).poll_read(context, buffer)
    }
}

impl tokio::io::AsyncWrite for Slotted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        buffer: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(context, buffer)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(context)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(context)
    }
}
