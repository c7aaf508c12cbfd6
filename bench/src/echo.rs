//! The Cap'n Proto baseline: a server that speaks engram's schema but does no work. Its
//! `remember` answers a receipt, its `get` and `ask` answer a fixed atom, so a round trip
//! to it costs exactly the RPC of the same messages. It runs as its own process
//! (`engram-bench echo-server`), like engramd.

use std::rc::Rc;

use capnp_rpc::{RpcSystem, rpc_twoparty_capnp, twoparty};
use engram_client::engram_schema::engram_capnp::{AtomKind, membrane, world_reader, world_writer};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

/// The text of the fixed atom the echo answers with (the benchmarks' atom size).
pub const ECHO_TEXT_BYTES: usize = 200;

struct EchoMembrane;
struct EchoWriter;
struct EchoReader;

fn fill_atom(mut atom: engram_client::engram_schema::engram_capnp::atom::Builder<'_>) {
    atom.set_id(&[1; 32]);
    atom.set_world("bench");
    atom.set_writer(&[2; 32]);
    atom.set_seq(1);
    atom.set_prev(&[3; 32]);
    atom.set_commit(1);
    let mut content = atom.init_content();
    content.set_kind(AtomKind::Fact);
    content.set_text("e".repeat(ECHO_TEXT_BYTES).as_str());
    content.init_labels(1).set(0, "label-7");
}

impl membrane::Server for EchoMembrane {
    async fn graft(
        self: Rc<Self>,
        _: membrane::GraftParams,
        mut results: membrane::GraftResults,
    ) -> Result<(), capnp::Error> {
        let mut world = results.get().init_worlds(1).get(0);
        world.set_world("bench");
        world.set_reader(capnp_rpc::new_client(EchoReader));
        world.set_writer(capnp_rpc::new_client(EchoWriter));
        Ok(())
    }
}

impl world_writer::Server for EchoWriter {
    async fn remember(
        self: Rc<Self>,
        params: world_writer::RememberParams,
        mut results: world_writer::RememberResults,
    ) -> Result<(), capnp::Error> {
        // Read what engram reads, so the baseline decodes the same message.
        let atom = params.get()?.get_atom()?;
        let _ = (atom.get_text()?, atom.get_labels()?.len());
        let mut receipt = results.get().init_receipt();
        receipt.set_id(&[1; 32]);
        receipt.set_seq(1);
        receipt.set_commit(1);
        receipt.set_prev(&[0; 32]);
        Ok(())
    }
}

impl world_reader::Server for EchoReader {
    async fn get(
        self: Rc<Self>,
        params: world_reader::GetParams,
        mut results: world_reader::GetResults,
    ) -> Result<(), capnp::Error> {
        let _ = params.get()?.get_id()?;
        fill_atom(results.get().init_atom());
        Ok(())
    }

    async fn ask(
        self: Rc<Self>,
        params: world_reader::AskParams,
        mut results: world_reader::AskResults,
    ) -> Result<(), capnp::Error> {
        let limit = params.get()?.get_query()?.get_limit();
        let mut hits = results.get().init_hits(limit);
        for index in 0..limit {
            fill_atom(hits.reborrow().get(index).init_atom());
        }
        Ok(())
    }
}

/// Serves the echo on a free loopback port; prints `echo ready tcp=ADDRESS`.
pub async fn serve() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding the echo server");
    println!("echo ready tcp={}", listener.local_addr().expect("address"));
    let membrane: membrane::Client = capnp_rpc::new_client(EchoMembrane);
    loop {
        let (stream, _) = listener.accept().await.expect("accepting");
        stream.set_nodelay(true).expect("nodelay");
        let (reader, writer) = stream.into_split();
        let network = twoparty::VatNetwork::new(
            reader.compat(),
            writer.compat_write(),
            rpc_twoparty_capnp::Side::Server,
            Default::default(),
        );
        let system = RpcSystem::new(Box::new(network), Some(membrane.clone().client));
        tokio::task::spawn_local(system);
    }
}

/// Connects to an echo server and grafts its reader and writer.
pub async fn capabilities(address: &str) -> (world_reader::Client, world_writer::Client) {
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connecting to the echo server");
    stream.set_nodelay(true).expect("nodelay");
    let (reader, writer) = stream.into_split();
    let network = twoparty::VatNetwork::new(
        reader.compat(),
        writer.compat_write(),
        rpc_twoparty_capnp::Side::Client,
        Default::default(),
    );
    let mut system = RpcSystem::new(Box::new(network), None);
    let membrane: membrane::Client = system.bootstrap(rpc_twoparty_capnp::Side::Server);
    tokio::task::spawn_local(system);
    let response = membrane
        .graft_request()
        .send()
        .promise
        .await
        .expect("graft");
    let world = response
        .get()
        .expect("results")
        .get_worlds()
        .expect("worlds")
        .get(0);
    (
        world.get_reader().expect("reader"),
        world.get_writer().expect("writer"),
    )
}
