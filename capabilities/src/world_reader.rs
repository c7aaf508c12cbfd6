//! `WorldReader`: reads one world within the restriction it carries.

use std::rc::Rc;

use engram_schema::engram_capnp::{hit, world_reader};
use engram_store::audit::AuditedQuery;
use engram_store::{Atom, Facts, Hash, Plan, ReadBudget, ReadView, StoreError};

use crate::convert::{
    AskRequest, Param, bytes32, read_ask, read_restriction, text_list, write_atom, write_atoms,
};
use crate::error::{CapabilityError, Wire};
use crate::grip::Grip;
use crate::restriction::Restriction;
use crate::token::Held;

pub struct WorldReader {
    grip: Grip,
    world: String,
}

impl crate::metered::Gripped for WorldReader {
    fn grip(&self) -> &Grip {
        &self.grip
    }

    fn world(&self) -> Option<&str> {
        Some(&self.world)
    }
}

impl WorldReader {
    pub(crate) fn new(grip: Grip, world: String) -> WorldReader {
        WorldReader { grip, world }
    }

    fn check_grip(&self) -> Result<(), capnp::Error> {
        self.grip.check(Some(&self.world)).wire()
    }

    /// The entry of every call: the grip's check, and one call from its rates.
    fn admit(&self) -> Result<(), capnp::Error> {
        self.grip.admit(Some(&self.world), 0).wire()
    }

    /// Runs `read` (of this world, through this reader's restriction) on the RPC thread
    /// within the inline budget; when it says it needs more, and the capability's rates
    /// pay for it (`Grip::pay_for_long_read`), runs it again off the thread within the
    /// call's budget (`Grip::off_thread`), and checks the grip again after, since the
    /// epoch may have moved meanwhile. Only a read that moves off the thread takes copies
    /// of the world's name and the restriction.
    async fn bounded<T: Send + 'static>(
        &self,
        read: impl Fn(&ReadView, &str, &Restriction, ReadBudget) -> Result<(T, bool), StoreError>
        + Send
        + 'static,
    ) -> Result<Bounded<T>, capnp::Error> {
        let view = self.grip.node.store.read().wire()?;
        let (inline, unfinished) = read(
            &view,
            &self.world,
            &self.grip.restriction,
            ReadBudget::INLINE,
        )
        .wire()?;
        drop(view);
        if !unfinished {
            return Ok(Bounded::Whole(inline));
        }
        if !self.grip.pay_for_long_read() {
            return Ok(Bounded::Cut(inline));
        }
        let (world, restriction) = (self.world.clone(), (*self.grip.restriction).clone());
        let answer = self
            .grip
            .off_thread(move |store| {
                Ok(read(&store.read()?, &world, &restriction, ReadBudget::CALL)?.0)
            })
            .await
            .wire()?;
        self.check_grip()?;
        Ok(Bounded::Whole(answer))
    }

    /// Records a read in the audit trail (`query`, the `ids` answered, the commit the
    /// answer stood at) before it is answered: waits while the trail's queue is full,
    /// and fails (`unavailable`) once the trail cannot be written.
    async fn audit(
        &self,
        query: AuditedQuery,
        ids: Vec<Hash>,
        commit: u64,
    ) -> Result<(), capnp::Error> {
        self.grip
            .audit(&self.world, query, ids, commit)
            .await
            .wire()
    }

    /// One page of the world's log in commit order, as `replay` and `diff` answer it:
    /// visible atoms after `from_commit`, up to `up_to`, within the call's budget;
    /// recorded in the audit trail as `query`.
    async fn log_page(
        &self,
        from_commit: u64,
        up_to: u64,
        limit: u32,
        query: AuditedQuery,
    ) -> Result<engram_store::ReplayPage, capnp::Error> {
        let (page, commit) = self
            .bounded(move |view, world, restriction, budget| {
                let visible = |atom: &dyn Facts| restriction.shows(atom);
                let page = view.replay_until(world, from_commit, up_to, limit, budget, &visible)?;
                let unfinished = page.examined_budget_spent;
                Ok(((page, view.last_commit()), unfinished))
            })
            .await?
            .either();
        self.audit(
            query,
            page.atoms.iter().map(|atom| atom.id).collect(),
            commit,
        )
        .await?;
        Ok(page)
    }

    /// A ranked ask (by vector, text or both): the search runs off the RPC thread,
    /// with the query's filters and this reader's restriction applied inside it.
    async fn ask_ranked(
        &self,
        request: AskRequest,
        mut results: world_reader::AskResults,
    ) -> Result<(), capnp::Error> {
        let node = &self.grip.node;
        let (vectors, texts) = (node.vectors.clone(), node.texts.clone());
        let world = self.world.clone();
        let restriction = (*self.grip.restriction).clone();
        let explain = request.explain;
        let as_of = request.query.states_as_of();
        let audited = AuditedQuery::Ask {
            query: request.query.clone(),
            text: request.text.clone(),
            vector_dimensions: request.vector.len(),
        };
        let ((ranked, coverage), contradictions, commit) = self
            .grip
            .off_thread(move |store| {
                let answer = store.ask_ranked(
                    &vectors,
                    &texts,
                    &world,
                    &request.query,
                    &request.vector,
                    &request.text,
                    &|facts| restriction.shows(facts),
                    !restriction.hides_atoms(),
                )?;
                let atoms = answer.0.iter().map(|found| &found.atom);
                let mut budget = usize::MAX;
                let view = store.read()?;
                let contradictions =
                    contradictions(&view, atoms, as_of, &restriction, &mut budget)?;
                Ok((answer, contradictions, view.last_commit()))
            })
            .await
            .wire()?;
        self.audit(
            audited,
            ranked.iter().map(|found| found.atom.id).collect(),
            commit,
        )
        .await?;
        // The epoch may have moved while the search ran.
        self.check_grip()?;
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
            write_contradictions(hit.reborrow(), &contradictions[index]);
            write_atom(hit.init_atom(), &found.atom);
        }
        Ok(())
    }
}

/// The live contradictions of each of `atoms` that `restriction` lets a reader see,
/// examining at most `budget` links in all: one list for each atom, in order, up to the
/// first whose contradictions the budget cannot cover.
fn contradictions<'a>(
    view: &ReadView,
    atoms: impl Iterator<Item = &'a Atom>,
    as_of: u64,
    restriction: &Restriction,
    budget: &mut usize,
) -> Result<Vec<Vec<Hash>>, StoreError> {
    let visible = |atom: &dyn Facts| restriction.shows(atom);
    let mut lists = Vec::new();
    for atom in atoms {
        match view.contradictions(atom, as_of, &visible, budget) {
            Ok(list) => lists.push(list),
            Err(StoreError::BudgetSpent { .. }) => break,
            Err(other) => return Err(other),
        }
    }
    Ok(lists)
}

// One hit's contradictions always fit the inline budget, so an answer cut at it holds
// at least one hit and its cursor moves on.
const _: () = assert!(
    engram_store::limits::ATOM_LINKS_MAX + engram_store::limits::CONTRADICTIONS_EXAMINED_MAX
        <= engram_store::limits::READ_INLINE_EXAMINED_MAX
);

fn write_contradictions(mut hit: hit::Builder<'_>, ids: &[Hash]) {
    if ids.is_empty() {
        return;
    }
    let mut list = hit.reborrow().init_contradictions(ids.len() as u32);
    for (index, id) in ids.iter().enumerate() {
        list.set(index as u32, id);
    }
}

impl world_reader::Server for WorldReader {
    async fn world(
        self: Rc<Self>,
        _: world_reader::WorldParams,
        mut results: world_reader::WorldResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        results.get().set_name(self.world.as_str());
        Ok(())
    }

    async fn get(
        self: Rc<Self>,
        params: world_reader::GetParams,
        mut results: world_reader::GetResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        let params = params.get().param()?;
        let id = bytes32(params.get_id().param()?, "the atom id").wire()?;
        let as_of = params.get_as_of();
        let view = self.grip.node.store.read().wire()?;
        let atom = view
            .atom_as_of(&self.world, &id, if as_of == 0 { u64::MAX } else { as_of })
            .wire()?;
        // Hidden, or (by `atom_as_of`) not yet committed at `asOf`: not found, alike.
        if !self.grip.restriction.shows(&atom) {
            return Err(
                CapabilityError::Store(engram_store::StoreError::AtomNotFound {
                    world: self.world.clone(),
                    id: hex::encode(id),
                })
                .into(),
            );
        }
        let commit = view.last_commit();
        drop(view);
        self.audit(AuditedQuery::Get { id, as_of }, vec![id], commit)
            .await?;
        write_atom(results.get().init_atom(), &atom);
        Ok(())
    }

    async fn ask(
        self: Rc<Self>,
        params: world_reader::AskParams,
        mut results: world_reader::AskResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        let mut request = read_ask(params.get().param()?.get_query().param()?).wire()?;
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
        let audited = AuditedQuery::Ask {
            query: query.clone(),
            text: String::new(),
            vector_dimensions: 0,
        };
        let page = self
            .bounded(move |view, world, restriction, budget| {
                let mut page = view.ask(world, &query, budget, &|atom| restriction.shows(atom))?;
                // On the RPC thread the hits' contradictions have the inline budget of
                // links to examine; past it, the ask moves off the thread, where each
                // hit's own bound is enough, or (when the rate cannot pay for that)
                // answers the hits it covered, with the cursor after the last of them.
                let mut links = if budget == ReadBudget::INLINE {
                    budget.examined
                } else {
                    usize::MAX
                };
                let found = contradictions(
                    view,
                    page.atoms.iter(),
                    query.states_as_of(),
                    restriction,
                    &mut links,
                )?;
                let mut unfinished = page.examined_budget_spent;
                if found.len() < page.atoms.len() {
                    page.atoms.truncate(found.len());
                    page.resume_before_commit = page.atoms.last().map(|atom| atom.commit);
                    unfinished = true;
                }
                Ok(((page, found, view.last_commit()), unfinished))
            })
            .await?;
        let ((page, contradictions, commit), budget) = match page {
            Bounded::Whole(page) => (page, "the node's budget for one call"),
            Bounded::Cut(page) => (page, "what this capability's rate pays for now"),
        };
        self.audit(
            audited,
            page.atoms.iter().map(|atom| atom.id).collect(),
            commit,
        )
        .await?;
        let mut results = results.get();
        if let Some(before) = page.resume_before_commit {
            results.set_resume_before_commit(before);
            results.set_warning(
                format!(
                    "this answer stopped at {budget} with {} atoms; ask again with \
                     beforeCommit {before} for more",
                    page.atoms.len()
                )
                .as_str(),
            );
        }
        let mut hits = results.init_hits(page.atoms.len() as u32);
        for (rank, atom) in page.atoms.iter().enumerate() {
            let mut hit = hits.reborrow().get(rank as u32);
            // Newest first: the score falls with rank so clients can merge answers.
            hit.set_score(1.0 / (rank as f64 + 1.0));
            if explain {
                hit.set_explanation(format!("newest first: rank {}", rank + 1).as_str());
            }
            write_contradictions(hit.reborrow(), &contradictions[rank]);
            write_atom(hit.init_atom(), atom);
        }
        Ok(())
    }

    async fn replay(
        self: Rc<Self>,
        params: world_reader::ReplayParams,
        mut results: world_reader::ReplayResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        let params = params.get().param()?;
        let (from_commit, limit) = (params.get_from_commit(), params.get_limit());
        let audited = AuditedQuery::Replay { from_commit, limit };
        let page = self.log_page(from_commit, u64::MAX, limit, audited).await?;
        let mut results = results.get();
        results.set_next_commit(page.next_commit);
        write_atoms(results.init_atoms(page.atoms.len() as u32), &page.atoms);
        Ok(())
    }

    async fn heads(
        self: Rc<Self>,
        params: world_reader::HeadsParams,
        mut results: world_reader::HeadsResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        let as_of = params.get().param()?.get_as_of();
        let heads = if self.grip.restriction.hides_atoms() || as_of != 0 {
            // A restricted reader sees the newest atom it may see of each chain, and
            // nothing of a chain it may see no atom of; the heads as of a commit are each
            // chain's newest entry committed by then.
            let as_of = if as_of == 0 { u64::MAX } else { as_of };
            self.bounded(move |view, world, restriction, budget| {
                let visible = |atom: &dyn Facts| restriction.shows(atom);
                match view.visible_heads(world, as_of, budget, &visible) {
                    Err(StoreError::BudgetSpent { .. }) if budget == ReadBudget::INLINE => {
                        Ok((Vec::new(), true))
                    }
                    found => found.map(|heads| (heads, false)),
                }
            })
            .await?
            .whole()
            .wire()?
        } else {
            self.grip
                .node
                .store
                .read()
                .wire()?
                .heads(&self.world)
                .wire()?
        };
        let mut list = results.get().init_heads(heads.len() as u32);
        for (index, head) in heads.iter().enumerate() {
            let mut entry = list.reborrow().get(index as u32);
            entry.set_writer(&head.writer);
            entry.set_seq(head.seq);
            entry.set_id(&head.id);
        }
        Ok(())
    }

    async fn diff(
        self: Rc<Self>,
        params: world_reader::DiffParams,
        mut results: world_reader::DiffResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        let params = params.get().param()?;
        let (from_commit, limit) = (params.get_from_commit(), params.get_limit());
        let to_commit = params.get_to_commit();
        let up_to = match to_commit {
            0 => u64::MAX,
            to_commit => to_commit,
        };
        let audited = AuditedQuery::Diff {
            from_commit,
            to_commit,
            limit,
        };
        let page = self.log_page(from_commit, up_to, limit, audited).await?;
        let mut results = results.get();
        results.set_next_commit(page.next_commit);
        write_atoms(results.init_atoms(page.atoms.len() as u32), &page.atoms);
        Ok(())
    }

    async fn check(
        self: Rc<Self>,
        params: world_reader::CheckParams,
        mut results: world_reader::CheckResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        let params = params.get().param()?;
        let text = params.get_plan().param()?;
        if text.len() > engram_store::limits::ATOM_TEXT_BYTES_MAX {
            return Err(CapabilityError::invalid(format!(
                "the plan is {} bytes; the limit is {}",
                text.len(),
                engram_store::limits::ATOM_TEXT_BYTES_MAX
            ))
            .into());
        }
        let text = text.to_str().map_err(CapabilityError::from).wire()?;
        let labels = params.get_labels().param()?;
        if labels.len() as usize > engram_store::limits::CHECK_LABELS_MAX {
            return Err(CapabilityError::invalid(format!(
                "{} labels; the limit is {}",
                labels.len(),
                engram_store::limits::CHECK_LABELS_MAX
            ))
            .into());
        }
        let labels = text_list(labels).wire()?;
        let audited = AuditedQuery::Check {
            plan: text.to_owned(),
            labels: labels.clone(),
        };
        let plan = std::sync::Arc::new(Plan::new(text, labels).wire()?);
        let report = self
            .bounded(move |view, world, restriction, budget| {
                let report = view.check(world, &plan, budget, &|atom| restriction.shows(atom))?;
                let unfinished = report.examined_budget_spent;
                Ok(((report, view.last_commit()), unfinished))
            })
            .await?;
        let ((report, commit), budget) = match report {
            Bounded::Whole(report) => (report, "the node's budget for one call"),
            Bounded::Cut(report) => (report, "what this capability's rate pays for now"),
        };
        let ids = report
            .violations
            .iter()
            .map(|found| found.constraint.id)
            .collect();
        self.audit(audited, ids, commit).await?;
        let mut results = results.get();
        if report.examined_budget_spent {
            results.set_warning(
                format!(
                    "the check stopped at {budget} after {} constraints: the plan may \
                     violate others; check it in parts",
                    report.examined
                )
                .as_str(),
            );
        }
        let mut list = results.init_violations(report.violations.len() as u32);
        for (index, violation) in report.violations.iter().enumerate() {
            let mut entry = list.reborrow().get(index as u32);
            let mut matched = entry
                .reborrow()
                .init_matched(violation.matched.len() as u32);
            for (position, term) in violation.matched.iter().enumerate() {
                matched.set(position as u32, term.as_str());
            }
            write_atom(entry.init_constraint(), &violation.constraint);
        }
        Ok(())
    }

    async fn commit_at(
        self: Rc<Self>,
        params: world_reader::CommitAtParams,
        mut results: world_reader::CommitAtResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        // Bisected by time, the answer would find hidden atoms' commits, and so their
        // count and times, which `generation` hides.
        if self.grip.restriction.hides_atoms() {
            return Err(CapabilityError::denied(
                "commitAt would name commits of atoms this reader's restriction hides; \
                 use a commit from an answer or a receipt as asOf",
            )
            .into());
        }
        let unix_ms = params.get().param()?.get_unix_ms();
        let commit = self
            .grip
            .node
            .store
            .read()
            .wire()?
            .commit_at(&self.world, unix_ms)
            .wire()?;
        results.get().set_commit(commit);
        Ok(())
    }

    async fn trust(
        self: Rc<Self>,
        params: world_reader::TrustParams,
        mut results: world_reader::TrustResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        if self.grip.restriction.hides_atoms() {
            return Err(CapabilityError::denied(
                "trust counts links from atoms this reader's restriction hides",
            )
            .into());
        }
        let params = params.get().param()?;
        let writer = bytes32(params.get_writer().param()?, "the writer key").wire()?;
        let label = params
            .get_label()
            .param()?
            .to_str()
            .map_err(CapabilityError::from)
            .wire()?;
        if !label.is_empty() {
            engram_store::atom::validate_label(label)
                .map_err(CapabilityError::invalid)
                .wire()?;
        }
        let trust = self
            .grip
            .node
            .store
            .read()
            .wire()?
            .trust(&self.world, &writer, label)
            .wire()?;
        let mut answer = results.get().init_trust();
        answer.set_score(trust.score());
        answer.set_confirms(trust.confirms);
        answer.set_corrects(trust.corrects);
        Ok(())
    }

    async fn generation(
        self: Rc<Self>,
        _: world_reader::GenerationParams,
        mut results: world_reader::GenerationResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        let generation = self
            .grip
            .node
            .store
            .read()
            .wire()?
            .generation(&self.world)
            .wire()?;
        let mut answer = results.get().init_generation();
        answer.set_node_commit(generation.node_commit);
        if self.grip.restriction.hides_atoms() {
            // Nothing of hidden writes: the node's commit moves with every write.
            answer.set_last_commit(generation.node_commit);
        } else {
            answer.set_last_commit(generation.last_commit);
            answer.set_atoms(generation.atoms);
            answer.set_counted(true);
        }
        Ok(())
    }

    async fn verify(
        self: Rc<Self>,
        _: world_reader::VerifyParams,
        mut results: world_reader::VerifyResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        // Hashing every entry is CPU work: it runs off the RPC thread.
        let world = self.world.clone();
        let restriction = (*self.grip.restriction).clone();
        let report = self
            .grip
            .off_thread(move |store| {
                let shows = |facts: &dyn Facts| restriction.shows(facts);
                let visible: Option<engram_store::Visible<'_>> =
                    restriction.hides_atoms().then_some(&shows);
                store.read()?.verify(&world, visible)
            })
            .await
            .wire()?;
        self.check_grip()?;
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
        self.admit()?;
        let restriction =
            read_restriction(params.get().param()?.get_restriction().param()?).wire()?;
        let narrowed = WorldReader::new(self.grip.narrowed(&restriction), self.world.clone());
        results.get().set_reader(crate::metered::client(narrowed));
        Ok(())
    }

    async fn save(
        self: Rc<Self>,
        _: world_reader::SaveParams,
        mut results: world_reader::SaveResults,
    ) -> Result<(), capnp::Error> {
        let token = self
            .grip
            .save(Held::Reader, Some(&self.world), None)
            .wire()?;
        results.get().set_token(&token);
        Ok(())
    }
}

/// A bounded read's answer.
enum Bounded<T> {
    /// Read within the call's budget.
    Whole(T),
    /// Only what the RPC thread's budget allowed, with its cursor: the capability's
    /// rates could not pay for more now.
    Cut(T),
}

impl<T> Bounded<T> {
    /// The answer, whole or cut (a page whose cursor says where to go on).
    fn either(self) -> T {
        match self {
            Bounded::Whole(answer) | Bounded::Cut(answer) => answer,
        }
    }

    /// The whole answer, or `resourceExhausted` for a read that has no partial answer.
    fn whole(self) -> Result<T, CapabilityError> {
        match self {
            Bounded::Whole(answer) => Ok(answer),
            Bounded::Cut(_) => Err(CapabilityError::ResourceExhausted(
                "this read needs more work than this capability's rate pays for now; \
                 slow down and try again"
                    .into(),
            )),
        }
    }
}
