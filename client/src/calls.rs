//! Typed helpers for the common calls. Each is one round trip.

use engram_schema::engram_capnp::{
    self as wire, admin, observer, signer, world_reader, world_writer,
};

use std::future::Future;
use std::time::Duration;

use crate::error::ClientError;
use crate::types::{
    Answer, AtomView, AuditView, CheckAnswer, Epoch, Filter, Generation, Grant, Head, HitView,
    IdempotencyKey, NewAtom, PrincipalView, Receipt, Remembered, Restriction, TrustView,
    Verification, ViolationView, WorldView,
};

/// Remembers atoms: `remember` for one, `rememberBatch` (all or nothing) for several.
/// Returns once they are durable. Not safe to retry: see [`remember_keyed`].
pub async fn remember(
    writer: &world_writer::Client,
    atoms: &[NewAtom],
) -> Result<Vec<Receipt>, ClientError> {
    Ok(send_remember(writer, atoms, &[]).await?.receipts)
}

/// Remembers atoms with an idempotency key: sent again with the same key (and the same
/// atoms) within the node's window (24 hours), by this principal in this world, it
/// writes nothing and answers the first request's receipts, `replayed`. What
/// [`remember_retrying`] retries with.
pub async fn remember_keyed(
    writer: &world_writer::Client,
    atoms: &[NewAtom],
    key: &IdempotencyKey,
) -> Result<Remembered, ClientError> {
    send_remember(writer, atoms, key.as_bytes()).await
}

/// Remembers atoms with `key`, retrying up to `attempts` times in all when the answer
/// is lost or the node failed (see [`ClientError::is_retryable`]), each time with a
/// writer from `acquire` (which may connect and log in again), after a pause that
/// doubles from 100 ms up to 2 s. The key makes the retries safe: the atoms are written
/// once.
pub async fn remember_retrying<F, Acquired>(
    acquire: F,
    atoms: &[NewAtom],
    key: &IdempotencyKey,
    attempts: u32,
) -> Result<Remembered, ClientError>
where
    F: FnMut() -> Acquired,
    Acquired: Future<Output = Result<world_writer::Client, ClientError>>,
{
    remember_retrying_telling(acquire, atoms, key, attempts, |_, _| {}).await
}

/// [`remember_retrying`], telling `retrying` of each failed attempt that is tried again
/// (its number, from 1, and its error): the error returned is only the last one's.
pub async fn remember_retrying_telling<F, Acquired>(
    mut acquire: F,
    atoms: &[NewAtom],
    key: &IdempotencyKey,
    attempts: u32,
    mut retrying: impl FnMut(u32, &ClientError),
) -> Result<Remembered, ClientError>
where
    F: FnMut() -> Acquired,
    Acquired: Future<Output = Result<world_writer::Client, ClientError>>,
{
    let mut pause = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        let result = match acquire().await {
            Ok(writer) => remember_keyed(&writer, atoms, key).await,
            Err(error) => Err(error),
        };
        match result {
            Err(error) if attempt < attempts && error.is_retryable() => {
                retrying(attempt, &error);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
                attempt += 1;
            }
            done => return done,
        }
    }
}

async fn send_remember(
    writer: &world_writer::Client,
    atoms: &[NewAtom],
    key: &[u8],
) -> Result<Remembered, ClientError> {
    if let [atom] = atoms {
        let mut request = writer.remember_request();
        let mut params = request.get();
        atom.fill(params.reborrow().init_atom());
        params.set_idempotency_key(key);
        let response = request.send().promise.await?;
        let results = response.get()?;
        return Ok(Remembered {
            receipts: vec![Receipt::read(results.get_receipt()?)?],
            replayed: results.get_replayed(),
        });
    }
    let mut request = writer.remember_batch_request();
    let mut params = request.get();
    params.set_idempotency_key(key);
    let mut list = params.init_atoms(atoms.len() as u32);
    for (index, atom) in atoms.iter().enumerate() {
        atom.fill(list.reborrow().get(index as u32));
    }
    let response = request.send().promise.await?;
    let results = response.get()?;
    Ok(Remembered {
        receipts: results
            .get_receipts()?
            .iter()
            .map(Receipt::read)
            .collect::<Result<_, _>>()?,
        replayed: results.get_replayed(),
    })
}

/// Moves the atom `target` to its next lifecycle state (`WorldWriter.transition`):
/// approve, reject, deprecate or retract, with `reason` as the transition atom's text
/// (empty: the transition's name). Returns the transition atom's receipt once durable.
pub async fn transition(
    writer: &world_writer::Client,
    target: &[u8; 32],
    kind: wire::TransitionKind,
    reason: &str,
) -> Result<Receipt, ClientError> {
    let mut request = writer.transition_request();
    let mut params = request.get();
    params.set_target(target);
    params.set_kind(kind);
    params.set_reason(reason);
    let response = request.send().promise.await?;
    Receipt::read(response.get()?.get_receipt()?)
}

/// The atom with this id.
pub async fn get(reader: &world_reader::Client, id: &[u8]) -> Result<AtomView, ClientError> {
    get_as_of(reader, id, 0).await
}

/// The atom `id` as the world stood at commit `as_of` (0: now): `notFound` if it was
/// committed after it.
pub async fn get_as_of(
    reader: &world_reader::Client,
    id: &[u8],
    as_of: u64,
) -> Result<AtomView, ClientError> {
    let mut request = reader.get_request();
    request.get().set_id(id);
    request.get().set_as_of(as_of);
    let response = request.send().promise.await?;
    AtomView::read(response.get()?.get_atom()?)
}

/// The atoms matching `filter`: newest first, or most relevant first with a vector
/// (similarity), text (words) or both fused.
pub async fn ask(
    reader: &world_reader::Client,
    filter: &Filter,
) -> Result<Vec<AtomView>, ClientError> {
    Ok(ask_scored(reader, filter)
        .await?
        .hits
        .into_iter()
        .map(|hit| hit.atom)
        .collect())
}

/// `ask` with each hit's score, similarity and explanation, the node's warning, and
/// where to continue when the answer stopped at the node's budget for one call.
pub async fn ask_scored(
    reader: &world_reader::Client,
    filter: &Filter,
) -> Result<Answer, ClientError> {
    let mut request = reader.ask_request();
    filter.fill(request.get().init_query());
    let response = request.send().promise.await?;
    let results = response.get()?;
    let mut hits = Vec::new();
    for hit in results.get_hits()?.iter() {
        hits.push(HitView {
            atom: AtomView::read(hit.get_atom()?)?,
            score: hit.get_score(),
            similarity: hit.get_similarity(),
            explanation: hit
                .get_explanation()?
                .to_string()
                .map_err(capnp::Error::from)?,
            contradictions: hit
                .get_contradictions()?
                .iter()
                .map(|id| {
                    id?.try_into().map_err(|_| {
                        ClientError::InvalidInput("the node sent an id that is not 32 bytes".into())
                    })
                })
                .collect::<Result<_, ClientError>>()?,
        });
    }
    Ok(Answer {
        hits,
        warning: results
            .get_warning()?
            .to_string()
            .map_err(capnp::Error::from)?,
        resume_before_commit: Some(results.get_resume_before_commit()).filter(|commit| *commit > 0),
    })
}

/// The audit trail of `principal` (a name, or a public key as 64 hex digits): its reads
/// answered at commits `from_commit..=to_commit` (0 as `to_commit`: no bound), in
/// commit order, skipping those of `from_commit` with a sequence up to
/// `after_sequence`; at most `limit` (1 to 1000).
pub async fn audit(
    admin: &admin::Client,
    principal: &str,
    from_commit: u64,
    to_commit: u64,
    after_sequence: u64,
    limit: u32,
) -> Result<Vec<AuditView>, ClientError> {
    let mut request = admin.audit_request();
    let mut params = request.get();
    params.set_principal(principal);
    params.set_from_commit(from_commit);
    params.set_to_commit(to_commit);
    params.set_after_sequence(after_sequence);
    params.set_limit(limit);
    let response = request.send().promise.await?;
    response
        .get()?
        .get_records()?
        .iter()
        .map(AuditView::read)
        .collect()
}

/// The pre-flight check: every live constraint of the reader's world, in scope for
/// `labels`, that `plan` violates (none when it violates nothing).
pub async fn check(
    reader: &world_reader::Client,
    plan: &str,
    labels: &[String],
) -> Result<CheckAnswer, ClientError> {
    let mut request = reader.check_request();
    request.get().set_plan(plan);
    let mut list = request.get().init_labels(labels.len() as u32);
    for (index, label) in labels.iter().enumerate() {
        list.set(index as u32, label.as_str());
    }
    let response = request.send().promise.await?;
    let results = response.get()?;
    let mut violations = Vec::new();
    for violation in results.get_violations()?.iter() {
        let mut matched = Vec::new();
        for term in violation.get_matched()?.iter() {
            matched.push(term?.to_string().map_err(capnp::Error::from)?);
        }
        violations.push(ViolationView {
            constraint: AtomView::read(violation.get_constraint()?)?,
            matched,
        });
    }
    Ok(CheckAnswer {
        violations,
        warning: results
            .get_warning()?
            .to_string()
            .map_err(capnp::Error::from)?,
    })
}

/// The last commit of the reader's world recorded at or before `unix_ms` (0 if none):
/// the `as_of` a time names.
pub async fn commit_at(reader: &world_reader::Client, unix_ms: i64) -> Result<u64, ClientError> {
    let mut request = reader.commit_at_request();
    request.get().set_unix_ms(unix_ms);
    Ok(request.send().promise.await?.get()?.get_commit())
}

/// The writer's trust in the reader's world on atoms carrying `label` ("": on all its
/// atoms): what other principals' `confirms` and `corrects` links said of them.
pub async fn trust(
    reader: &world_reader::Client,
    writer: &[u8; 32],
    label: &str,
) -> Result<TrustView, ClientError> {
    let mut request = reader.trust_request();
    request.get().set_writer(writer);
    request.get().set_label(label);
    let response = request.send().promise.await?;
    let trust = response.get()?.get_trust()?;
    Ok(TrustView {
        score: trust.get_score(),
        confirms: trust.get_confirms(),
        corrects: trust.get_corrects(),
    })
}

/// Atoms after `from_commit` in commit order, and the cursor to continue from.
pub async fn replay(
    reader: &world_reader::Client,
    from_commit: u64,
    limit: u32,
) -> Result<(Vec<AtomView>, u64), ClientError> {
    let mut request = reader.replay_request();
    request.get().set_from_commit(from_commit);
    request.get().set_limit(limit);
    let response = request.send().promise.await?;
    let results = response.get()?;
    Ok((read_atoms(results.get_atoms()?)?, results.get_next_commit()))
}

/// What changed between two commits: the atoms committed after `from_commit` and at or
/// before `to_commit` (0: now), in commit order, at most `limit`, and the cursor to
/// continue from (`to_commit` once everything up to it was read).
pub async fn diff(
    reader: &world_reader::Client,
    from_commit: u64,
    to_commit: u64,
    limit: u32,
) -> Result<(Vec<AtomView>, u64), ClientError> {
    let mut request = reader.diff_request();
    request.get().set_from_commit(from_commit);
    request.get().set_to_commit(to_commit);
    request.get().set_limit(limit);
    let response = request.send().promise.await?;
    let results = response.get()?;
    Ok((read_atoms(results.get_atoms()?)?, results.get_next_commit()))
}

fn read_atoms(
    atoms: capnp::struct_list::Reader<'_, engram_schema::engram_capnp::atom::Owned>,
) -> Result<Vec<AtomView>, ClientError> {
    atoms.iter().map(AtomView::read).collect()
}

/// Where the reader's world stands: compare `last_commit` with the previous call's to
/// tell whether anything new was written, without a query.
pub async fn generation(reader: &world_reader::Client) -> Result<Generation, ClientError> {
    let response = reader.generation_request().send().promise.await?;
    let generation = response.get()?.get_generation()?;
    Ok(Generation {
        node_commit: generation.get_node_commit(),
        last_commit: generation.get_last_commit(),
        atoms: generation.get_atoms(),
        counted: generation.get_counted(),
    })
}

/// The head of every chain of the reader's world.
pub async fn heads(reader: &world_reader::Client) -> Result<Vec<Head>, ClientError> {
    heads_as_of(reader, 0).await
}

/// The head of every chain of the reader's world as it stood at commit `as_of` (0: now).
pub async fn heads_as_of(
    reader: &world_reader::Client,
    as_of: u64,
) -> Result<Vec<Head>, ClientError> {
    let mut request = reader.heads_request();
    request.get().set_as_of(as_of);
    let response = request.send().promise.await?;
    let mut heads = Vec::new();
    for head in response.get()?.get_heads()?.iter() {
        let bytes = |data: &[u8]| -> Result<[u8; 32], ClientError> {
            data.try_into().map_err(|_| {
                ClientError::InvalidInput("the node sent a hash that is not 32 bytes".into())
            })
        };
        heads.push(Head {
            writer: bytes(head.get_writer()?)?,
            seq: head.get_seq(),
            id: bytes(head.get_id()?)?,
        });
    }
    Ok(heads)
}

/// Verifies every chain of the reader's world.
pub async fn verify(reader: &world_reader::Client) -> Result<Verification, ClientError> {
    use engram_schema::engram_capnp::verify_report::result;
    let response = reader.verify_request().send().promise.await?;
    let report = response.get()?.get_report()?;
    let first_bad = match report.get_result().which().map_err(capnp::Error::from)? {
        result::Ok(()) => None,
        result::Bad(bad) => {
            let bad = bad?;
            let writer: [u8; 32] = bad.get_writer()?.try_into().map_err(|_| {
                ClientError::InvalidInput("the node sent a writer key that is not 32 bytes".into())
            })?;
            Some((
                writer,
                bad.get_seq(),
                bad.get_reason()?.to_string().map_err(capnp::Error::from)?,
            ))
        }
    };
    Ok(Verification {
        chains: report.get_chains(),
        entries: report.get_entries(),
        first_bad,
    })
}

/// A narrowed reader.
pub async fn attenuate_reader(
    reader: &world_reader::Client,
    restriction: &Restriction,
) -> Result<world_reader::Client, ClientError> {
    let mut request = reader.attenuate_request();
    restriction.fill(request.get().init_restriction());
    Ok(request.send().promise.await?.get()?.get_reader()?)
}

/// A narrowed writer.
pub async fn attenuate_writer(
    writer: &world_writer::Client,
    restriction: &Restriction,
) -> Result<world_writer::Client, ClientError> {
    let mut request = writer.attenuate_request();
    restriction.fill(request.get().init_restriction());
    Ok(request.send().promise.await?.get()?.get_writer()?)
}

/// A narrowed observer.
pub async fn attenuate_observer(
    observer: &observer::Client,
    restriction: &Restriction,
) -> Result<observer::Client, ClientError> {
    let mut request = observer.attenuate_request();
    restriction.fill(request.get().init_restriction());
    Ok(request.send().promise.await?.get()?.get_observer()?)
}

/// A signer limited to these domains (intersected with the holder's).
pub async fn attenuate_signer(
    signer: &signer::Client,
    domains: &[String],
) -> Result<signer::Client, ClientError> {
    let mut request = signer.attenuate_request();
    let mut list = request.get().init_domains(domains.len() as u32);
    for (index, domain) in domains.iter().enumerate() {
        list.set(index as u32, domain.as_str());
    }
    let response = request.send().promise.await?;
    Ok(response.get()?.get_signer()?)
}

/// Signs `message` under `domain`; returns the 64-byte signature.
pub async fn sign(
    signer: &signer::Client,
    domain: &str,
    message: &[u8],
) -> Result<Vec<u8>, ClientError> {
    let mut request = signer.sign_request();
    request.get().set_domain(domain);
    request.get().set_message(message);
    Ok(request
        .send()
        .promise
        .await?
        .get()?
        .get_signature()?
        .to_vec())
}

/// The signer's public key.
pub async fn signer_public_key(signer: &signer::Client) -> Result<[u8; 32], ClientError> {
    let response = signer.public_key_request().send().promise.await?;
    response
        .get()?
        .get_key()?
        .try_into()
        .map_err(|_| ClientError::InvalidInput("the node sent a key that is not 32 bytes".into()))
}

/// Creates a world; its first vector will fix its vector dimension.
pub async fn create_world(admin: &admin::Client, name: &str) -> Result<WorldView, ClientError> {
    create_world_with_dimension(admin, name, 0).await
}

/// Creates a world whose every vector must have `vector_dimension` components (0 leaves
/// it to the first vector written).
pub async fn create_world_with_dimension(
    admin: &admin::Client,
    name: &str,
    vector_dimension: u32,
) -> Result<WorldView, ClientError> {
    let mut request = admin.create_world_request();
    request.get().set_name(name);
    request.get().set_vector_dimension(vector_dimension);
    WorldView::read(request.send().promise.await?.get()?.get_world()?)
}

/// Archives (`archived = true`) or resumes a world.
pub async fn set_world_archived(
    admin: &admin::Client,
    name: &str,
    archived: bool,
) -> Result<WorldView, ClientError> {
    if archived {
        let mut request = admin.archive_world_request();
        request.get().set_name(name);
        WorldView::read(request.send().promise.await?.get()?.get_world()?)
    } else {
        let mut request = admin.resume_world_request();
        request.get().set_name(name);
        WorldView::read(request.send().promise.await?.get()?.get_world()?)
    }
}

/// Every world.
pub async fn list_worlds(admin: &admin::Client) -> Result<Vec<WorldView>, ClientError> {
    let response = admin.list_worlds_request().send().promise.await?;
    response
        .get()?
        .get_worlds()?
        .iter()
        .map(WorldView::read)
        .collect()
}

fn fill_grants(
    mut list: capnp::struct_list::Builder<'_, engram_schema::engram_capnp::grant::Owned>,
    grants: &[Grant],
) {
    for (index, grant) in grants.iter().enumerate() {
        let mut builder = list.reborrow().get(index as u32);
        builder.set_world(grant.world.as_str());
        builder.set_read(grant.read);
        builder.set_write(grant.write);
        builder.set_observe(grant.observe);
        builder.set_approve(grant.approve);
        grant.rate.fill(builder.init_rate());
    }
}

/// Adds a principal.
pub async fn add_principal(
    admin: &admin::Client,
    name: &str,
    public_key: &[u8],
    is_admin: bool,
    grants: &[Grant],
) -> Result<PrincipalView, ClientError> {
    let mut request = admin.add_principal_request();
    {
        let mut params = request.get();
        params.set_name(name);
        params.set_public_key(public_key);
        params.set_admin(is_admin);
        fill_grants(params.init_grants(grants.len() as u32), grants);
    }
    PrincipalView::read(request.send().promise.await?.get()?.get_principal()?)
}

/// Replaces a principal's grants.
pub async fn set_grants(
    admin: &admin::Client,
    name: &str,
    grants: &[Grant],
) -> Result<PrincipalView, ClientError> {
    let mut request = admin.set_grants_request();
    request.get().set_name(name);
    fill_grants(request.get().init_grants(grants.len() as u32), grants);
    PrincipalView::read(request.send().promise.await?.get()?.get_principal()?)
}

/// Removes a principal.
pub async fn remove_principal(admin: &admin::Client, name: &str) -> Result<(), ClientError> {
    let mut request = admin.remove_principal_request();
    request.get().set_name(name);
    request.send().promise.await?;
    Ok(())
}

/// Every principal.
pub async fn list_principals(admin: &admin::Client) -> Result<Vec<PrincipalView>, ClientError> {
    let response = admin.list_principals_request().send().promise.await?;
    response
        .get()?
        .get_principals()?
        .iter()
        .map(PrincipalView::read)
        .collect()
}

/// The current epoch.
pub async fn current_epoch(admin: &admin::Client) -> Result<Epoch, ClientError> {
    let response = admin.current_epoch_request().send().promise.await?;
    Epoch::read(response.get()?.get_epoch()?)
}

/// Advances the epoch; returns once every older capability is revoked.
pub async fn advance_epoch(admin: &admin::Client, head: &[u8; 32]) -> Result<Epoch, ClientError> {
    let mut request = admin.advance_epoch_request();
    request.get().set_head(head);
    Epoch::read(request.send().promise.await?.get()?.get_epoch()?)
}
