//! Lexical search: a tantivy index of every atom's text (BM25), derived from the store
//! like the vector index and caught up by the same indexer thread. A search covers what
//! the index holds and matches the newer atoms word by word, so no answer is stale.
//! Filters run on facts kept beside the index; a search widens until it has enough
//! atoms that pass them, so a filtered ask for k finds k when k exist.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use redb::ReadableTable;
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, Occur, Query, TermQuery};
use tantivy::schema::{Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TEXT, Value};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use crate::Store;
use crate::error::StoreError;
use crate::limits::{SEARCH_EXAMINED_MAX, TEXT_QUERY_WORDS_MAX};
use crate::tables::WORLDS;
use crate::vector::AtomFacts;

/// Bytes the index writer buffers before it flushes a segment.
const WRITER_MEMORY_BYTES: usize = 50 * 1024 * 1024;
/// Added documents become searchable (a tantivy commit and reader reload) once this many
/// are waiting, or once the oldest has waited `PUBLISH_AFTER`. A commit per atom would
/// cost more CPU than the write itself; what waits is matched word by word meanwhile.
const PUBLISH_DOCUMENTS: usize = 2048;
const PUBLISH_AFTER: Duration = Duration::from_millis(100);

/// A match of a lexical search: commit and BM25 score (or matched words for atoms
/// compared outside the index).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TextMatch {
    pub commit: u64,
    /// The atom's importance, for ranking before the atom is read.
    pub importance: f32,
    pub score: f32,
}

/// What a lexical search found.
#[derive(Clone, Debug, PartialEq)]
pub struct TextAnswer {
    /// Best first.
    pub matches: Vec<TextMatch>,
    /// Atoms matched word by word because the index did not hold them yet.
    pub compared_exactly: usize,
    /// Atoms newer than the index were left unsearched: there were more than the
    /// search's budget.
    pub tail_cut: bool,
    /// The search stopped widening at its budget of matching documents: better matches
    /// that pass the filters may exist.
    pub budget_spent: bool,
}

/// The lexical index of every world.
pub struct TextIndex {
    writing: Mutex<Writing>,
    reader: IndexReader,
    world: Field,
    text: Field,
    commit: Field,
    /// Facts of the indexed atoms, by world and commit.
    facts: RwLock<HashMap<String, HashMap<u64, AtomFacts>>>,
    /// For each world, the commit up to which every atom's text is searchable. Per
    /// world: in a fleet a world's atoms arrive with the commits its owner gave them,
    /// which may be older than the commits of atoms already here in other worlds.
    covered: RwLock<HashMap<String, u64>>,
}

/// The indexer's side: documents added to the writer but not yet searchable.
struct Writing {
    writer: IndexWriter,
    /// For each world, every atom up to this commit has been added to the writer.
    added_through: HashMap<String, u64>,
    /// Facts of the added atoms, by world, published with them.
    pending: Vec<(String, AtomFacts)>,
    /// When the oldest waiting document was added.
    pending_since: Option<Instant>,
}

fn failed(error: tantivy::TantivyError) -> StoreError {
    StoreError::TransactionFailed {
        reason: format!("text index: {error}"),
    }
}

/// The words of `text` as the index sees them: lower case, split at anything that is
/// not a letter or a digit.
fn words(text: &str) -> Vec<String> {
    text.split(|character: char| !character.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
        .collect()
}

impl TextIndex {
    /// An empty index in memory; [`TextIndex::catch_up`] fills it from the store.
    pub fn new() -> Result<TextIndex, StoreError> {
        let mut schema = Schema::builder();
        let world = schema.add_text_field("world", STRING);
        let text = schema.add_text_field("text", TEXT);
        let commit = schema.add_u64_field("commit", INDEXED | STORED);
        let index = Index::create_in_ram(schema.build());
        let writer = index
            .writer_with_num_threads(1, WRITER_MEMORY_BYTES)
            .map_err(failed)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(failed)?;
        Ok(TextIndex {
            writing: Mutex::new(Writing {
                writer,
                added_through: HashMap::new(),
                pending: Vec::new(),
                pending_since: None,
            }),
            reader,
            world,
            text,
            commit,
            facts: RwLock::new(HashMap::new()),
            covered: RwLock::new(HashMap::new()),
        })
    }

    /// The commit up to which every atom of `world` has its text searchable.
    pub fn covered(&self, world: &str) -> u64 {
        let covered = self.covered.read().expect("never poisoned");
        covered.get(world).copied().unwrap_or(0)
    }

    /// Adds every atom committed since the last call to the index writer, and makes
    /// what waits searchable once enough has waited or for long enough. Returns how
    /// long until a call should come again to publish what still waits (`None`: nothing
    /// waits). Called by the indexer thread only.
    pub fn catch_up(&self, store: &Store) -> Result<Option<Duration>, StoreError> {
        let mut writing = self.writing.lock().expect("never poisoned");
        let view = store.read()?;
        let worlds = view.table(WORLDS)?;
        for entry in worlds.iter()? {
            let (name, _) = entry?;
            let name = name.value();
            let target = view.world_last_commit(name)?;
            let from = writing.added_through.get(name).copied().unwrap_or(0);
            if target <= from {
                continue;
            }
            for atom in view.atoms_in_log(name, from, target)? {
                let atom = atom?;
                let mut document = TantivyDocument::default();
                document.add_text(self.world, name);
                document.add_text(self.text, &atom.content.text);
                document.add_u64(self.commit, atom.commit);
                writing.writer.add_document(document).map_err(failed)?;
                writing
                    .pending
                    .push((name.to_owned(), AtomFacts::of(&atom)));
            }
            writing.added_through.insert(name.to_owned(), target);
            writing.pending_since.get_or_insert_with(Instant::now);
        }
        let Some(since) = writing.pending_since else {
            return Ok(None);
        };
        let waited = since.elapsed();
        if writing.pending.len() < PUBLISH_DOCUMENTS && waited < PUBLISH_AFTER {
            return Ok(Some(PUBLISH_AFTER - waited));
        }
        // Facts first, then the documents become visible, then the covered commit moves.
        {
            let mut facts = self.facts.write().expect("never poisoned");
            for (world, fact) in writing.pending.drain(..) {
                facts.entry(world).or_default().insert(fact.commit, fact);
            }
        }
        writing.writer.commit().map_err(failed)?;
        self.reader.reload().map_err(failed)?;
        writing.pending_since = None;
        self.covered
            .write()
            .expect("never poisoned")
            .clone_from(&writing.added_through);
        Ok(None)
    }

    /// Atoms of `world` whose text matches `text`, best first, among those `allowed`
    /// lets through: at most `limit` from the index, plus the newer atoms it does not
    /// hold yet matched word by word.
    pub fn search(
        &self,
        store: &Store,
        world: &str,
        text: &str,
        limit: usize,
        allowed: &(dyn Fn(&AtomFacts) -> bool + Sync),
    ) -> Result<TextAnswer, StoreError> {
        let mut query_words = words(text);
        query_words.sort_unstable();
        query_words.dedup();
        if query_words.is_empty() {
            return Err(StoreError::InvalidQuery {
                reason: "the query text has no words to search for".into(),
            });
        }
        if query_words.len() > TEXT_QUERY_WORDS_MAX {
            return Err(StoreError::InvalidQuery {
                reason: format!(
                    "the query text has {} distinct words; the limit is {TEXT_QUERY_WORDS_MAX}",
                    query_words.len()
                ),
            });
        }
        let covered = self.covered(world);
        // Words, and nothing else: any word matches (BM25 ranks those with more first);
        // no query syntax (wildcards, ranges, fields) reaches tantivy.
        let any_word: Vec<(Occur, Box<dyn Query>)> = query_words
            .iter()
            .map(|word| {
                let term = Term::from_field_text(self.text, word);
                let query: Box<dyn Query> =
                    Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs));
                (Occur::Should, query)
            })
            .collect();
        let query = BooleanQuery::new(vec![
            (
                Occur::Must,
                Box::new(TermQuery::new(
                    Term::from_field_text(self.world, world),
                    IndexRecordOption::Basic,
                )),
            ),
            (Occur::Must, Box::new(BooleanQuery::new(any_word))),
        ]);
        let searcher = self.reader.searcher();
        let mut matches = Vec::new();
        let mut budget_spent = false;
        // Widen until enough atoms pass the filters, nothing more matches, or the search
        // has examined its budget. The facts are locked only while filtering, so the
        // indexer never waits on a search's own work.
        let mut window = (limit.max(1) * 4).min(SEARCH_EXAMINED_MAX);
        loop {
            let found = searcher
                .search(&query, &TopDocs::with_limit(window).order_by_score())
                .map_err(failed)?;
            let mut commits = Vec::with_capacity(found.len());
            for (score, address) in &found {
                let document: TantivyDocument = searcher.doc(*address).map_err(failed)?;
                if let Some(commit) = document
                    .get_first(self.commit)
                    .and_then(|value| value.as_u64())
                {
                    commits.push((*score, commit));
                }
            }
            matches.clear();
            {
                let facts = self.facts.read().expect("never poisoned");
                let facts = facts.get(world);
                for (score, commit) in commits {
                    if commit <= covered
                        && let Some(fact) = (facts.and_then(|facts| facts.get(&commit)))
                            .filter(|fact| allowed(fact))
                    {
                        matches.push(TextMatch {
                            commit,
                            importance: fact.importance,
                            score,
                        });
                    }
                }
            }
            if matches.len() >= limit || found.len() < window {
                break;
            }
            if window == SEARCH_EXAMINED_MAX {
                budget_spent = true;
                break;
            }
            window = (window * 4).min(SEARCH_EXAMINED_MAX);
        }
        matches.truncate(limit);
        // What the index does not hold yet is matched word by word.
        let view = store.read()?;
        let mut compared_exactly = 0;
        let mut tail_cut = false;
        let mut tail = Vec::new();
        for (examined, atom) in view.atoms_in_log(world, covered, u64::MAX)?.enumerate() {
            if examined == SEARCH_EXAMINED_MAX {
                tail_cut = true;
                break;
            }
            let atom = atom?;
            let facts = AtomFacts::of(&atom);
            if !allowed(&facts) {
                continue;
            }
            // Counted only when visible: the count must not tell about hidden atoms.
            compared_exactly += 1;
            let atom_words = words(&atom.content.text);
            let matched = query_words
                .iter()
                .filter(|word| atom_words.contains(word))
                .count();
            if matched > 0 {
                tail.push(TextMatch {
                    commit: atom.commit,
                    importance: atom.content.importance,
                    score: matched as f32,
                });
            }
        }
        tail.sort_by(|left, right| right.score.total_cmp(&left.score));
        // Index and tail scores are not comparable: interleave them by rank.
        let mut merged = Vec::with_capacity(matches.len() + tail.len());
        let (mut indexed, mut newer) = (matches.into_iter(), tail.into_iter());
        loop {
            match (indexed.next(), newer.next()) {
                (None, None) => break,
                (first, second) => merged.extend(first.into_iter().chain(second)),
            }
        }
        merged.truncate(limit);
        Ok(TextAnswer {
            matches: merged,
            compared_exactly,
            tail_cut,
            budget_spent,
        })
    }
}
