//! `WorldReader`: reads one world within the restriction it carries.

use std::rc::Rc;

use engram_schema::engram_capnp::world_reader;
use engram_store::Atom;

use crate::convert::{
    AskRequest, bytes32, malformed, read_ask, read_restriction, write_atom, write_atoms,
};
use crate::error::{CapabilityError, Wire};
use crate::grip::Grip;

pub struct WorldReader {
    grip: Grip,
    world: String,
}

impl WorldReader {
    pub(crate) fn new(grip: Grip, world: String) -> WorldReader {
        WorldReader { grip, world }
    }

    fn check(&self) -> Result<(), capnp::Error> {
        self.grip.check(Some(&self.world)).wire()
    }

    fn shows(&self) -> impl Fn(&Atom) -> bool + '_ {
        |atom| self.grip.restriction.shows(atom)
    }

    /// A ranked ask (by vector, text or both): the search runs off the RPC thread,
    /// with the query's filters and this reader's restriction applied inside it.
    async fn ask_ranked(
        &self,
        request: AskRequest,
        mut results: world_reader::AskResults,
    ) -> Result<(), capnp::Error> {
        let _permit = self.grip.begin_call().wire()?;
        let node = &self.grip.node;
        let (store, vectors, texts) =
            (node.store.clone(), node.vectors.clone(), node.texts.clone());
        let world = self.world.clone();
        let restriction = (*self.grip.restriction).clone();
        let explain = request.explain;
        let (ranked, coverage) = tokio::task::spawn_blocking(move || {
            store.ask_ranked(
                &vectors,
                &texts,
                &world,
                &request.query,
                &request.vector,
                &request.text,
                &|facts| restriction.shows_facts(facts),
            )
        })
        .await
        .map_err(|error| capnp::Error::failed(format!("internal: search task failed: {error}")))?
        .wire()?;
        // The epoch may have moved while the search ran.
        self.check()?;
        let mut results = results.get();
        if let Some(warning) = coverage.warning() {
            results.set_warning(warning.as_str());
        }
        let mut hits = results.init_hits(ranked.len() as u32);
        for (index, found) in ranked.iter().enumerate() {
            let mut hit = hits.reborrow().get(index as u32);
            hit.set_score(found.score);
            hit.set_similarity(found.similarity);
            if explain {
                hit.set_explanation(found.explanation.as_str());
            }
            write_atom(hit.init_atom(), &found.atom);
        }
        Ok(())
    }
}

impl world_reader::Server for WorldReader {
    async fn world(
        self: Rc<Self>,
        _: world_reader::WorldParams,
        mut results: world_reader::WorldResults,
    ) -> Result<(), capnp::Error> {
        self.check()?;
        results.get().set_name(self.world.as_str());
        Ok(())
    }

    async fn get(
        self: Rc<Self>,
        params: world_reader::GetParams,
        mut results: world_reader::GetResults,
    ) -> Result<(), capnp::Error> {
        self.check()?;
        let id = bytes32(
            params.get()?.get_id().map_err(malformed).wire()?,
            "the atom id",
        )
        .wire()?;
        let atom = self
            .grip
            .node
            .store
            .read()
            .wire()?
            .atom(&self.world, &id)
            .wire()?;
        if !self.grip.restriction.shows(&atom) {
            return Err(
                CapabilityError::Store(engram_store::StoreError::AtomNotFound {
                    world: self.world.clone(),
                    id: hex::encode(id),
                })
                .into(),
            );
        }
        write_atom(results.get().init_atom(), &atom);
        Ok(())
    }

    async fn ask(
        self: Rc<Self>,
        params: world_reader::AskParams,
        mut results: world_reader::AskResults,
    ) -> Result<(), capnp::Error> {
        self.check()?;
        let mut request = read_ask(params.get()?.get_query().map_err(malformed).wire()?).wire()?;
        request
            .query
            .validate()
            .map_err(CapabilityError::from)
            .wire()?;
        if !self.grip.restriction.fold_into(&mut request.query) {
            results.get().init_hits(0);
            return Ok(());
        }
        if !request.vector.is_empty() || !request.text.is_empty() {
            return self.ask_ranked(request, results).await;
        }
        let (query, explain) = (request.query, request.explain);
        let atoms = self
            .grip
            .node
            .store
            .read()
            .wire()?
            .ask(&self.world, &query, &self.shows())
            .wire()?;
        let mut hits = results.get().init_hits(atoms.len() as u32);
        for (rank, atom) in atoms.iter().enumerate() {
            let mut hit = hits.reborrow().get(rank as u32);
            // Newest first: the score falls with rank so clients can merge answers.
            hit.set_score(1.0 / (rank as f64 + 1.0));
            if explain {
                hit.set_explanation(format!("newest first: rank {}", rank + 1).as_str());
            }
            write_atom(hit.init_atom(), atom);
        }
        Ok(())
    }

    async fn replay(
        self: Rc<Self>,
        params: world_reader::ReplayParams,
        mut results: world_reader::ReplayResults,
    ) -> Result<(), capnp::Error> {
        self.check()?;
        let params = params.get()?;
        let (atoms, next) = self
            .grip
            .node
            .store
            .read()
            .wire()?
            .replay(
                &self.world,
                params.get_from_commit(),
                params.get_limit(),
                &self.shows(),
            )
            .wire()?;
        let mut results = results.get();
        results.set_next_commit(next);
        write_atoms(results.init_atoms(atoms.len() as u32), &atoms);
        Ok(())
    }

    async fn heads(
        self: Rc<Self>,
        _: world_reader::HeadsParams,
        mut results: world_reader::HeadsResults,
    ) -> Result<(), capnp::Error> {
        self.check()?;
        let heads = self
            .grip
            .node
            .store
            .read()
            .wire()?
            .heads(&self.world)
            .wire()?;
        let mut list = results.get().init_heads(heads.len() as u32);
        for (index, head) in heads.iter().enumerate() {
            let mut entry = list.reborrow().get(index as u32);
            entry.set_writer(&head.writer);
            entry.set_seq(head.seq);
            entry.set_id(&head.id);
        }
        Ok(())
    }

    async fn verify(
        self: Rc<Self>,
        _: world_reader::VerifyParams,
        mut results: world_reader::VerifyResults,
    ) -> Result<(), capnp::Error> {
        self.check()?;
        let _permit = self.grip.begin_call().wire()?;
        // Hashing every entry is CPU work: it runs off the RPC thread.
        let store = self.grip.node.store.clone();
        let world = self.world.clone();
        let report = tokio::task::spawn_blocking(move || store.read()?.verify(&world))
            .await
            .map_err(|error| {
                capnp::Error::failed(format!("internal: verify task failed: {error}"))
            })?
            .wire()?;
        self.check()?;
        let mut builder = results.get().init_report();
        builder.set_chains(report.chains);
        builder.set_entries(report.entries);
        match &report.first_bad {
            None => builder.init_result().set_ok(()),
            Some(bad) => {
                let mut entry = builder.init_result().init_bad();
                entry.set_world(bad.world.as_str());
                entry.set_writer(&bad.writer);
                entry.set_seq(bad.seq);
                entry.set_reason(bad.reason.as_str());
            }
        }
        Ok(())
    }

    async fn attenuate(
        self: Rc<Self>,
        params: world_reader::AttenuateParams,
        mut results: world_reader::AttenuateResults,
    ) -> Result<(), capnp::Error> {
        self.check()?;
        let restriction =
            read_restriction(params.get()?.get_restriction().map_err(malformed).wire()?).wire()?;
        let narrowed = WorldReader::new(self.grip.narrowed(&restriction), self.world.clone());
        results.get().set_reader(capnp_rpc::new_client(narrowed));
        Ok(())
    }
}
