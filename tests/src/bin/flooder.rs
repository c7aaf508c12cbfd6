//! A hostile spawned child for the tests: it sends its parent `--calls` replay calls on
//! its descriptor 3 and never reads an answer. Then it waits until its parent cuts it off
//! (its end of the connection hangs up), says so, and waits for a line on its input.

use std::io::{BufRead, Write};
use std::os::fd::{AsRawFd, FromRawFd};

use capnp::traits::HasTypeId;
use capnp_rpc::rpc_capnp::message;
use engram_client::engram_schema::engram_capnp::world_reader;

/// The replay method's ordinal in `WorldReader`.
const REPLAY: u16 = 3;

fn main() {
    let calls: u32 = std::env::args()
        .skip_while(|argument| argument != "--calls")
        .nth(1)
        .and_then(|calls| calls.parse().ok())
        .expect("usage: flooder --calls N");
    // SAFETY: engram spawn left descriptor 3 open for this process alone.
    let mut connection = unsafe { std::os::unix::net::UnixStream::from_raw_fd(3) };

    let mut bootstrap = capnp::message::Builder::new_default();
    bootstrap
        .init_root::<message::Builder>()
        .init_bootstrap()
        .set_question_id(0);
    capnp::serialize::write_message(&mut connection, &bootstrap).expect("sending bootstrap");
    let mut written = 0;
    for question in 1..=calls {
        let mut call = capnp::message::Builder::new_default();
        let mut body = call.init_root::<message::Builder>().init_call();
        body.set_question_id(question);
        body.set_interface_id(world_reader::Client::TYPE_ID);
        body.set_method_id(REPLAY);
        body.reborrow()
            .init_target()
            .init_promised_answer()
            .set_question_id(0);
        let mut params = body
            .init_params()
            .init_content()
            .init_as::<world_reader::replay_params::Builder>();
        params.set_from_commit(0);
        params.set_limit(1000);
        if capnp::serialize::write_message(&mut connection, &call).is_err() {
            break;
        }
        written += 1;
    }
    connection.flush().ok();
    // Waits for the parent to hang up, reading nothing.
    let mut hang_up = libc::pollfd {
        fd: connection.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for a descriptor this process holds.
    while unsafe { libc::poll(&mut hang_up, 1, -1) } < 1 {}
    println!("flooder: cut off after sending {written} calls");
    std::io::stdout().flush().ok();
    std::io::stdin().lock().lines().next();
}
