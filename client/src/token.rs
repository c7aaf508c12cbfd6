//! Tokens (the schema's `tokenFormat`): save a capability, restore it on any connection
//! without a login, narrow it offline, keep it in a file, revoke it.
//!
//! A token is bytes on the wire and base64url text (biscuit's) in a file.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use biscuit_auth::{BlockBuilder, UnverifiedBiscuit};
use engram_schema::engram_capnp::admin;
pub use engram_schema::token::Narrowing;

use crate::error::ClientError;
use crate::spawn::Held;
use crate::{Connection, Membrane};

/// This capability as a token (`save()`), for [`Connection::restore`].
pub async fn save(held: &Held) -> Result<Vec<u8>, ClientError> {
    macro_rules! saved {
        ($client:expr) => {{
            let response = $client.save_request().send().promise.await?;
            response.get()?.get_token()?.to_vec()
        }};
    }
    Ok(match held {
        Held::Reader(reader) => saved!(reader),
        Held::Writer(writer) => saved!(writer),
        Held::Observer(observer) => saved!(observer),
        Held::Signer(signer) => saved!(signer),
    })
}

impl Connection {
    /// Exchanges a token for the live capability it names (`Terminal.restore`), and
    /// the world it is of (empty for a signer). No login.
    pub async fn restore(&self, token: &[u8]) -> Result<(String, Held), ClientError> {
        self.restore_with(token, false).await
    }

    /// As [`Connection::restore`], narrowed `withoutSave` when `without_save`: the
    /// capability (and whatever is attenuated from it) cannot be saved, so its authority
    /// ends with this connection. What a parent restores for a child.
    pub async fn restore_with(
        &self,
        token: &[u8],
        without_save: bool,
    ) -> Result<(String, Held), ClientError> {
        let mut request = self.terminal().restore_request();
        request.get().set_token(token);
        request.get().set_without_save(without_save);
        let response = request.send().promise.await?;
        let results = response.get()?;
        let world = results
            .get_world()?
            .to_string()
            .map_err(capnp::Error::from)?;
        let held = if results.has_reader() {
            Held::Reader(results.get_reader()?)
        } else if results.has_writer() {
            Held::Writer(results.get_writer()?)
        } else if results.has_observer() {
            Held::Observer(results.get_observer()?)
        } else if results.has_signer() {
            Held::Signer(results.get_signer()?)
        } else {
            return Err(ClientError::InvalidInput(
                "the node restored the token as no capability".into(),
            ));
        };
        Ok((world, held))
    }
}

impl Membrane {
    /// Revokes a token of this principal (`Membrane.revokeToken`): it and every token
    /// attenuated from it, and the capabilities restored from them. Returns once durable.
    pub async fn revoke_token(&self, token: &[u8]) -> Result<(), ClientError> {
        let mut request = self.client.revoke_token_request();
        request.get().set_token(token);
        request.send().promise.await?;
        Ok(())
    }
}

/// Revokes any principal's token (`Admin.revokeToken`).
pub async fn revoke_token(admin: &admin::Client, token: &[u8]) -> Result<(), ClientError> {
    let mut request = admin.revoke_token_request();
    request.get().set_token(token);
    request.send().promise.await?;
    Ok(())
}

/// `token` with one more block stating `narrowing`: narrower, never wider. Offline: no
/// node and no key needed.
pub fn attenuate(token: &[u8], narrowing: &Narrowing) -> Result<Vec<u8>, ClientError> {
    let mut block = BlockBuilder::new();
    for fact in narrowing.facts() {
        block = block.fact(fact).map_err(not_a_token)?;
    }
    parse(token)?
        .append(block)
        .and_then(|token| token.to_vec())
        .map_err(not_a_token)
}

/// Each block of a token, the node's first, as its facts (one line each): what it
/// grants and how each attenuation narrowed it. Read as typed terms, so a string a
/// holder chose shows escaped inside its quotes and never as facts of its own. The
/// signatures are the node's to check.
pub fn describe(token: &[u8]) -> Result<Vec<String>, ClientError> {
    let blocks = engram_schema::token::typed_blocks(token)
        .map_err(|reason| ClientError::InvalidInput(format!("not an engram token: {reason}")))?;
    Ok(blocks
        .iter()
        .map(|facts| {
            facts
                .iter()
                .map(|fact| engram_schema::token::fact_text(fact) + ";\n")
                .collect()
        })
        .collect())
}

/// Reads a token file (base64url text).
pub fn read_file(path: &Path) -> Result<Vec<u8>, ClientError> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        ClientError::InvalidInput(format!(
            "cannot read the token file {}: {error}",
            path.display()
        ))
    })?;
    UnverifiedBiscuit::from_base64(text.trim())
        .and_then(|token| token.to_vec())
        .map_err(|error| {
            ClientError::InvalidInput(format!("{} holds no token: {error}", path.display()))
        })
}

/// Writes a token file (base64url text) with mode 0600, replacing any file there: a
/// token is a bearer credential.
pub fn write_file(path: &Path, token: &[u8]) -> Result<(), ClientError> {
    let io = |error: std::io::Error| {
        ClientError::InvalidInput(format!(
            "cannot write the token file {}: {error}",
            path.display()
        ))
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    // A file that was there keeps its mode otherwise.
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(io)?;
    writeln!(file, "{}", to_text(token)?).map_err(io)?;
    file.sync_all().map_err(io)
}

/// A token as the text of a token file.
pub fn to_text(token: &[u8]) -> Result<String, ClientError> {
    parse(token)?.to_base64().map_err(not_a_token)
}

fn parse(token: &[u8]) -> Result<UnverifiedBiscuit, ClientError> {
    UnverifiedBiscuit::from(token).map_err(not_a_token)
}

fn not_a_token(error: biscuit_auth::error::Token) -> ClientError {
    ClientError::InvalidInput(format!("not a token: {error}"))
}
