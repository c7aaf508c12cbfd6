//! A sandboxed child: its only authority is the capability `engram spawn` serves it on
//! its descriptor 3. It holds no key and needs no network.
//!
//! ```text
//! cargo build --bins
//! target/debug/engram spawn --reader team/auth --label public -- \
//!     unshare --net target/debug/child --try-node 127.0.0.1:7420
//! ```
//!
//! It prints what the capability lets it see; with `--try-node` it shows that it cannot
//! reach the node by itself; with `--wait` it waits for a line on its input and reads
//! again, to show a capability the parent's epoch or grants no longer back failing. A
//! reader also tries to save what it holds as a token, which the node refuses: the
//! child's authority ends with its parent.

use std::io::BufRead;
use std::process::ExitCode;

use clap::Parser;
use engram_client::spawn::{Held, inherited};
use engram_client::{ClientError, Endpoint, Filter, NewAtom, connect};

#[derive(Parser)]
struct Arguments {
    /// Try to connect to the node at this address directly (it should fail).
    #[arg(long)]
    try_node: Option<String>,
    /// After the first read, wait for a line on standard input and read again.
    #[arg(long)]
    wait: bool,
}

async fn run(arguments: Arguments) -> Result<(), ClientError> {
    let inherited = inherited()?;
    let world = inherited.world.as_str();
    if let Some(address) = &arguments.try_node {
        match connect(&Endpoint::parse(address)).await {
            Ok(_) => println!("child: reached the node directly at {address}"),
            Err(error) => println!("child: cannot reach the node directly: {error}"),
        }
    }
    match &inherited.held {
        Held::Reader(reader) => {
            println!("child: holds a reader of {world}");
            let read = || async {
                engram_client::ask(
                    reader,
                    &Filter {
                        limit: 100,
                        ..Filter::default()
                    },
                )
                .await
            };
            for atom in read().await? {
                println!("child: sees {:?}", atom.text);
            }
            // Its authority ends with its parent: it cannot save what it holds, nor
            // anything it narrows from it, as a token to use after the parent is gone.
            let narrowed =
                engram_client::attenuate_reader(reader, &engram_client::Restriction::default())
                    .await?;
            for (which, held) in [("it", reader), ("a narrowing of it", &narrowed)] {
                match engram_client::token::save(&Held::Reader(held.clone())).await {
                    Ok(token) => println!("child: saved {which} as a {}-byte token", token.len()),
                    Err(error) => println!("child: saving {which} failed: {error}"),
                }
            }
            if arguments.wait {
                println!("child: waiting");
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line).ok();
                match read().await {
                    Ok(atoms) => println!("child: sees {} atoms again", atoms.len()),
                    Err(error) => println!("child: reading again failed: {error}"),
                }
            }
        }
        Held::Writer(writer) => {
            println!("child: holds a writer of {world}");
            let receipts = engram_client::remember(
                writer,
                &[NewAtom::fact("written by a child").labels(&["public"])],
            )
            .await?;
            println!("child: remembered at commit {}", receipts[0].commit);
        }
        Held::Observer(_) => println!("child: holds an observer of {world}"),
        Held::Signer(signer) => {
            let key = engram_client::signer_public_key(signer).await?;
            println!("child: holds a signer whose key begins {:02x?}", &key[..4]);
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    engram_client::run_program("child", run(Arguments::parse()))
}
