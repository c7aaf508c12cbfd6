//! Every capability the node hands out is served through [`Metered`]: each call is
//! counted by interface, method and outcome (`engram_calls_total`), timed
//! (`engram_call_seconds`), and logged when it fails or is slow (target `engram::call`,
//! with the principal's name, the world and the method; never a key or an atom's
//! text). The wrapper sits between capnp-rpc and the generated dispatch, so no method
//! can forget it.

use std::cell::Cell;
use std::ops::Deref;
use std::rc::Rc;
use std::time::{Duration, Instant};

use capnp::any_pointer;
use capnp::capability::{
    DispatchCallResult, FromClientHook, FromServer, Params, Promise, Results, Server,
};
use capnp::private::capability::ClientHook;
use engram_schema::ErrorCode;

/// Who calls through a capability, as its calls are logged.
pub(crate) trait Caller {
    /// The principal's name (`None` before login).
    fn principal(&self) -> Option<&str>;
    /// The world the capability is of, if any.
    fn world(&self) -> Option<&str> {
        None
    }
    /// Calls that take longer are logged as slow.
    fn slow_call(&self) -> Duration;
}

/// A capability that carries a grip: its caller is the grip's principal.
pub(crate) trait Gripped {
    fn grip(&self) -> &crate::grip::Grip;
    /// The world the capability is of, if any.
    fn world(&self) -> Option<&str> {
        None
    }
}

impl<T: Gripped> Caller for T {
    fn principal(&self) -> Option<&str> {
        Some(&self.grip().name)
    }

    fn world(&self) -> Option<&str> {
        Gripped::world(self)
    }

    fn slow_call(&self) -> Duration {
        self.grip().node.limits.slow_call
    }
}

/// A client of interface `C` whose server's calls are metered: `C`'s own
/// [`FromServer`], wrapped.
pub(crate) struct Metered<C>(pub C);

impl<C: FromClientHook> FromClientHook for Metered<C> {
    fn new(hook: Box<dyn ClientHook>) -> Self {
        Metered(C::new(hook))
    }

    fn into_client_hook(self) -> Box<dyn ClientHook> {
        self.0.into_client_hook()
    }

    fn as_client_hook(&self) -> &dyn ClientHook {
        self.0.as_client_hook()
    }
}

impl<C, S> FromServer<S> for Metered<C>
where
    C: FromServer<S>,
    S: Caller + 'static,
{
    type Dispatch = Dispatch<C::Dispatch>;

    fn from_server(server: Rc<S>) -> Self::Dispatch {
        Dispatch(C::from_server(server))
    }
}

/// The client of `server`, every call of it metered.
pub(crate) fn client<C, S>(server: S) -> C
where
    C: FromServer<S>,
    S: Caller + 'static,
{
    capnp_rpc::new_client::<Metered<C>, S>(server).0
}

/// The generated dispatch `D`, its calls metered.
#[derive(Clone)]
pub(crate) struct Dispatch<D>(D);

impl<D: Deref> Deref for Dispatch<D> {
    type Target = D::Target;

    fn deref(&self) -> &D::Target {
        &self.0
    }
}

impl<D> Server for Dispatch<D>
where
    D: Server + Clone + Deref + 'static,
    D::Target: Caller,
{
    fn dispatch_call(
        self,
        interface_id: u64,
        method_id: u16,
        params: Params<any_pointer::Owned>,
        results: Results<any_pointer::Owned>,
    ) -> DispatchCallResult {
        let call = Call {
            server: self.0.clone(),
            method: engram_schema::method_name(interface_id, method_id)
                .unwrap_or(("unknown", "unknown")),
            started: Instant::now(),
            finished: false,
        };
        let DispatchCallResult {
            promise,
            is_streaming,
        } = self
            .0
            .dispatch_call(interface_id, method_id, params, results);
        let promise = Promise::from_future(async move {
            let mut call = call;
            let result = promise.await;
            call.finish(match &result {
                Ok(()) => "ok",
                Err(error) => outcome(error),
            });
            result
        });
        DispatchCallResult::new(promise, is_streaming)
    }

    fn as_ptr(&self) -> usize {
        self.0.as_ptr()
    }
}

/// The stable code a failed call was answered with, or `failed` for an error that is
/// none of engram's (capnp-rpc's own, e.g. an unknown method).
fn outcome(error: &capnp::Error) -> &'static str {
    match ErrorCode::parse_description(&error.extra) {
        Some((code, _)) => code.as_str(),
        None => "failed",
    }
}

/// Lines of failed and slow calls logged a second at most: past it, such calls are
/// counted into the next line logged (`calls_not_logged`), so that a holder making bad
/// calls as fast as its rates allow cannot flood the log (the metrics count every call).
const CALL_LINES_PER_SECOND_MAX: u32 = 50;

thread_local! {
    /// The RPC thread's budget of call lines.
    static CALL_LINES: CallLines = const { CallLines::new() };
}

/// The call lines of the current second, and the calls not logged since the last line.
struct CallLines {
    second: Cell<Option<Instant>>,
    lines: Cell<u32>,
    not_logged: Cell<u64>,
}

impl CallLines {
    const fn new() -> CallLines {
        CallLines {
            second: Cell::new(None),
            lines: Cell::new(0),
            not_logged: Cell::new(0),
        }
    }

    /// `Some(calls not logged since the last line)` if a line may be logged now; else
    /// counts this call as not logged.
    fn take(&self) -> Option<u64> {
        let now = Instant::now();
        let current = self
            .second
            .get()
            .is_some_and(|second| now.duration_since(second) < Duration::from_secs(1));
        if !current {
            self.second.set(Some(now));
            self.lines.set(0);
        }
        if self.lines.get() >= CALL_LINES_PER_SECOND_MAX {
            self.not_logged.set(self.not_logged.get() + 1);
            return None;
        }
        self.lines.set(self.lines.get() + 1);
        Some(self.not_logged.replace(0))
    }
}

/// One call in progress; a call dropped before it finished (the caller cancelled it,
/// or its connection closed) is recorded as `cancelled`.
struct Call<D: Deref>
where
    D::Target: Caller,
{
    server: D,
    method: (&'static str, &'static str),
    started: Instant,
    finished: bool,
}

impl<D: Deref> Call<D>
where
    D::Target: Caller,
{
    fn finish(&mut self, outcome: &'static str) {
        self.finished = true;
        let elapsed = self.started.elapsed();
        let (interface, method) = self.method;
        metrics::counter!(
            "engram_calls_total",
            "interface" => interface,
            "method" => method,
            "code" => outcome,
        )
        .increment(1);
        metrics::histogram!(
            "engram_call_seconds",
            "interface" => interface,
            "method" => method,
        )
        .record(elapsed);
        let caller: &D::Target = &self.server;
        let failed = !matches!(outcome, "ok" | "cancelled");
        let slow = elapsed > caller.slow_call();
        if (failed || slow)
            && let Some(not_logged) = CALL_LINES.with(CallLines::take)
        {
            tracing::warn!(
                target: "engram::call",
                interface,
                method,
                principal = caller.principal().unwrap_or("-"),
                world = caller.world().unwrap_or("-"),
                code = outcome,
                elapsed_ms = elapsed.as_millis() as u64,
                calls_not_logged = (not_logged > 0).then_some(not_logged),
                "{}",
                if failed { "call failed" } else { "slow call" }
            );
        }
    }
}

impl<D: Deref> Drop for Call<D>
where
    D::Target: Caller,
{
    fn drop(&mut self) {
        if !self.finished {
            self.finish("cancelled");
        }
    }
}
