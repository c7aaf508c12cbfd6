//! Lexical search: a tantivy index of every atom's text (BM25), derived from the store
//! like the vector index and caught up by the same indexer thread. A search covers what
//! the index holds and matches the newer atoms word by word, so no answer is stale.
//! Filters run on each match's facts, read in place from the store's entry; a search
//! widens until it has enough atoms that pass them, so a filtered ask for k finds k
//! when k exist.
//!
//! The index lives in its own directory beside the store and survives restarts: each
//! tantivy commit carries, as its payload, the store's id and the commit each world is
//! covered up to, so a start — after a crash too, since a tantivy commit is atomic —
//! goes on from there. An index of another store, or one that claims commits its store
//! does not have, is emptied and rebuilt.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use redb::ReadableTable;
use tantivy::collector::{Count, TopDocs};
use tantivy::query::{Bm25StatisticsProvider, BooleanQuery, Occur, Query, TermQuery};
use tantivy::schema::{Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TEXT, Value};
use tantivy::{
    DocSet, Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, TERMINATED, TantivyDocument,
    Term,
};

use crate::Store;
use crate::atom::Facts;
use crate::error::StoreError;
use crate::limits::{SEARCH_EXAMINED_MAX, TEXT_QUERY_WORDS_MAX};
use crate::progress::Progress;
use crate::tables::WORLDS;

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
    /// The id of the store the index is of, recorded with each commit.
    store_id: u64,
    /// For each world, the commit up to which every atom's text is searchable. Per
    /// world: in a fleet a world's atoms arrive with the commits its owner gave them,
    /// which may be older than the commits of atoms already here in other worlds.
    covered: RwLock<HashMap<String, u64>>,
    /// Each world's documents and words, as of a searcher generation: what BM25 scores
    /// a search in the world with (see [`WorldStatistics`]).
    world_sizes: Mutex<HashMap<String, WorldSize>>,
}

/// A world's documents and the words of their text, in one searcher generation.
#[derive(Clone, Copy)]
struct WorldSize {
    generation: u64,
    documents: u64,
    tokens: u64,
}

/// BM25's statistics of one world alone: how many of its documents hold a word, how
/// many documents and words it has. A search in a world is scored with these, never
/// the whole index's, so what it shows (ranks, scores) says nothing of other worlds.
/// Without a `size` (a reader whose restriction hides atoms, which the world's
/// statistics count), uniform ones: every word as rare as any other, every document
/// measured against the same length, so a hit's score weighs its own words only.
struct WorldStatistics<'a> {
    searcher: &'a Searcher,
    world: &'a Term,
    text: Field,
    size: Option<WorldSize>,
}

/// The uniform statistics' documents and words per document.
const UNIFORM_DOCUMENTS: u64 = 1_000_000;
const UNIFORM_WORDS_PER_DOCUMENT: u64 = 16;

impl Bm25StatisticsProvider for WorldStatistics<'_> {
    fn total_num_tokens(&self, field: Field) -> tantivy::Result<u64> {
        let Some(size) = self.size else {
            return Ok(UNIFORM_DOCUMENTS * UNIFORM_WORDS_PER_DOCUMENT);
        };
        if field == self.text {
            Ok(size.tokens)
        } else {
            // The world field: one word a document.
            Ok(size.documents)
        }
    }

    fn total_num_docs(&self) -> tantivy::Result<u64> {
        Ok(self
            .size
            .map_or(UNIFORM_DOCUMENTS, |size| size.documents.max(1)))
    }

    fn doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
        let Some(size) = self.size else {
            return Ok(1);
        };
        if term.field() != self.text {
            return Ok(size.documents);
        }
        let in_world = BooleanQuery::new(vec![
            (
                Occur::Must,
                Box::new(TermQuery::new(self.world.clone(), IndexRecordOption::Basic))
                    as Box<dyn Query>,
            ),
            (
                Occur::Must,
                Box::new(TermQuery::new(term.clone(), IndexRecordOption::Basic)),
            ),
        ]);
        Ok(self.searcher.search(&in_world, &Count)? as u64)
    }
}

/// The indexer's side: documents added to the writer but not yet searchable.
struct Writing {
    index: Index,
    /// `None` after a failure: the next catch-up opens a new one at the last commit.
    writer: Option<IndexWriter>,
    /// For each world, every atom up to this commit has been added to the writer.
    added_through: HashMap<String, u64>,
    /// Documents added and not yet searchable.
    pending: usize,
    /// When the oldest waiting document was added.
    pending_since: Option<Instant>,
}

fn open_writer(index: &Index) -> Result<IndexWriter, StoreError> {
    index
        .writer_with_num_threads(1, WRITER_MEMORY_BYTES)
        .map_err(failed)
}

impl Writing {
    /// The index writer, opened again at the last commit if a failure dropped it.
    fn writer(&mut self) -> Result<&mut IndexWriter, StoreError> {
        if self.writer.is_none() {
            self.writer = Some(open_writer(&self.index)?);
        }
        Ok(self.writer.as_mut().expect("opened above"))
    }
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

/// What each commit of the index records (its payload): whose index it is and how far
/// it covers each world.
#[derive(serde::Serialize, serde::Deserialize)]
struct Payload {
    format: u32,
    store: u64,
    covered: HashMap<String, u64>,
}

const PAYLOAD_FORMAT: u32 = 1;

fn schema() -> (Schema, Field, Field, Field) {
    let mut schema = Schema::builder();
    let world = schema.add_text_field("world", STRING);
    let text = schema.add_text_field("text", TEXT);
    let commit = schema.add_u64_field("commit", INDEXED | STORED);
    (schema.build(), world, text, commit)
}

impl TextIndex {
    /// The index kept in `directory` (created if need be), going on from what it covered
    /// when last committed; emptied first if it is not `store`'s or does not match it.
    pub fn open(directory: &Path, store: &Store) -> Result<TextIndex, StoreError> {
        let io = |error: std::io::Error| StoreError::Io {
            what: format!("the text index in {}", directory.display()),
            source: error,
        };
        std::fs::create_dir_all(directory).map_err(io)?;
        let (schema, ..) = schema();
        let opened = tantivy::directory::MmapDirectory::open(directory)
            .map_err(|error| failed(error.into()))
            .and_then(|files| Index::open_or_create(files, schema.clone()).map_err(failed));
        let index = match opened {
            Ok(index) => index,
            Err(error) => {
                tracing::warn!(%error, "the text index on disk does not open; rebuilding it");
                std::fs::remove_dir_all(directory).map_err(io)?;
                std::fs::create_dir_all(directory).map_err(io)?;
                let files = tantivy::directory::MmapDirectory::open(directory)
                    .map_err(|error| failed(error.into()))?;
                Index::create(files, schema, Default::default()).map_err(failed)?
            }
        };
        let payload = index
            .load_metas()
            .ok()
            .and_then(|metas| metas.payload)
            .and_then(|payload| serde_json::from_str::<Payload>(&payload).ok());
        let covered = match payload {
            Some(payload) if payload.format == PAYLOAD_FORMAT && payload.store == store.id() => {
                let view = store.read()?;
                let mut matches = true;
                for (world, commit) in &payload.covered {
                    matches &=
                        view.world(world)?.is_some() && *commit <= view.world_last_commit(world)?;
                }
                if matches { Some(payload.covered) } else { None }
            }
            // A new index: nothing to empty.
            None if index.searchable_segment_ids().map_err(failed)?.is_empty() => {
                Some(HashMap::new())
            }
            _ => None,
        };
        let text = TextIndex::on(index, store, covered.clone().unwrap_or_default())?;
        if covered.is_none() {
            tracing::warn!("the text index on disk is not this store's; rebuilding it");
            let mut writing = text.writing.lock().expect("never poisoned");
            writing.writer()?.delete_all_documents().map_err(failed)?;
            text.commit(&mut writing)?;
        }
        Ok(text)
    }

    fn on(
        index: Index,
        store: &Store,
        covered: HashMap<String, u64>,
    ) -> Result<TextIndex, StoreError> {
        let (_, world, text, commit) = schema();
        let writer = open_writer(&index)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(failed)?;
        Ok(TextIndex {
            writing: Mutex::new(Writing {
                index,
                writer: Some(writer),
                added_through: covered.clone(),
                pending: 0,
                pending_since: None,
            }),
            reader,
            world,
            text,
            commit,
            store_id: store.id(),
            covered: RwLock::new(covered),
            world_sizes: Mutex::new(HashMap::new()),
        })
    }

    /// Commits what was added, with the payload saying how far each world is covered,
    /// makes it searchable, and moves the covered commits.
    fn commit(&self, writing: &mut Writing) -> Result<(), StoreError> {
        let payload = Payload {
            format: PAYLOAD_FORMAT,
            store: self.store_id,
            covered: writing.added_through.clone(),
        };
        let mut prepared = writing.writer()?.prepare_commit().map_err(failed)?;
        prepared.set_payload(&serde_json::to_string(&payload).expect("a payload serializes"));
        prepared.commit().map_err(failed)?;
        self.reader.reload().map_err(failed)?;
        writing.pending = 0;
        writing.pending_since = None;
        self.covered
            .write()
            .expect("never poisoned")
            .clone_from(&writing.added_through);
        Ok(())
    }

    /// The commit up to which every atom of `world` has its text searchable.
    pub fn covered(&self, world: &str) -> u64 {
        let covered = self.covered.read().expect("never poisoned");
        covered.get(world).copied().unwrap_or(0)
    }

    /// Adds every atom committed since the last call to the index writer, and makes
    /// what waits searchable once enough has waited or for long enough. Returns how
    /// long until a call should come again to publish what still waits (`None`: nothing
    /// waits). Called by the indexer thread only. On a failure (out of descriptors, a
    /// full disk) the writer goes back to its last commit, and so does what it counts
    /// as added: the next call adds those atoms again, so none is left out of the index
    /// while a search takes it as covered.
    pub fn catch_up(&self, store: &Store) -> Result<Option<Duration>, StoreError> {
        let mut writing = self.writing.lock().expect("never poisoned");
        let caught_up = self.add_and_publish(store, &mut writing);
        if caught_up.is_err() {
            // A writer that failed may be dead (tantivy kills it on an I/O error in a
            // worker): drop it, and what it held, and start again from the last commit.
            writing.writer = None;
            writing.added_through = self.covered.read().expect("never poisoned").clone();
            writing.pending = 0;
            writing.pending_since = None;
        }
        caught_up
    }

    fn add_and_publish(
        &self,
        store: &Store,
        writing: &mut Writing,
    ) -> Result<Option<Duration>, StoreError> {
        let view = store.read()?;
        let worlds = view.table(WORLDS)?;
        let mut progress = Progress::new(
            "text",
            crate::progress::behind(&view, &worlds, &writing.added_through, false)?,
        );
        for entry in worlds.iter()? {
            let (name, _) = entry?;
            let name = name.value();
            let target = view.world_last_commit(name)?;
            let from = writing.added_through.get(name).copied().unwrap_or(0);
            if target <= from {
                continue;
            }
            for atom in view.atoms_in_log(name, from, target)? {
                progress.advance(1);
                let atom = atom?;
                let mut document = TantivyDocument::default();
                document.add_text(self.world, name);
                document.add_text(self.text, &atom.content.text);
                document.add_u64(self.commit, atom.commit);
                writing.writer()?.add_document(document).map_err(failed)?;
                writing.pending += 1;
            }
            writing.added_through.insert(name.to_owned(), target);
            writing.pending_since.get_or_insert_with(Instant::now);
        }
        let Some(since) = writing.pending_since else {
            return Ok(None);
        };
        let waited = since.elapsed();
        if writing.pending < PUBLISH_DOCUMENTS && waited < PUBLISH_AFTER {
            return Ok(Some(PUBLISH_AFTER - waited));
        }
        self.commit(writing)?;
        Ok(None)
    }

    /// `world`'s documents and the words of their text in `searcher`'s generation:
    /// counted once a generation (a walk of the world's documents and their lengths),
    /// then remembered.
    fn world_size(
        &self,
        searcher: &Searcher,
        world: &str,
        world_term: &Term,
    ) -> Result<WorldSize, StoreError> {
        let generation = searcher.generation().generation_id();
        let known = self
            .world_sizes
            .lock()
            .expect("the world sizes' lock")
            .get(world)
            .copied();
        if let Some(size) = known.filter(|size| size.generation == generation) {
            return Ok(size);
        }
        let mut size = WorldSize {
            generation,
            documents: 0,
            tokens: 0,
        };
        for segment in searcher.segment_readers() {
            let postings = segment
                .inverted_index(self.world)
                .map_err(failed)?
                .read_postings(world_term, IndexRecordOption::Basic)
                .map_err(|error| failed(error.into()))?;
            let Some(mut postings) = postings else {
                continue;
            };
            let lengths = segment.get_fieldnorms_reader(self.text).map_err(failed)?;
            let alive = segment.alive_bitset();
            let mut document = postings.doc();
            while document != TERMINATED {
                if alive.is_none_or(|alive| alive.is_alive(document)) {
                    size.documents += 1;
                    size.tokens += u64::from(lengths.fieldnorm(document));
                }
                document = postings.advance();
            }
        }
        self.world_sizes
            .lock()
            .expect("the world sizes' lock")
            .insert(world.to_owned(), size);
        Ok(size)
    }

    /// Atoms of `world` whose text matches `text`, best first, among those `allowed`
    /// lets through: at most `limit` from the index, plus the newer atoms it does not
    /// hold yet matched word by word. Scored with the world's word statistics when the
    /// caller may see the `whole_world`, else with uniform ones (what `allowed` hides
    /// must not move the order).
    pub fn search(
        &self,
        store: &Store,
        world: &str,
        text: &str,
        limit: usize,
        allowed: &(dyn Fn(&dyn Facts) -> bool + Sync),
        whole_world: bool,
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
        let world_term = Term::from_field_text(self.world, world);
        let query = BooleanQuery::new(vec![
            (
                Occur::Must,
                Box::new(TermQuery::new(world_term.clone(), IndexRecordOption::Basic)),
            ),
            (Occur::Must, Box::new(BooleanQuery::new(any_word))),
        ]);
        let searcher = self.reader.searcher();
        let statistics = WorldStatistics {
            searcher: &searcher,
            world: &world_term,
            text: self.text,
            size: whole_world
                .then(|| self.world_size(&searcher, world, &world_term))
                .transpose()?,
        };
        let view = store.read()?;
        let mut matches = Vec::new();
        let mut budget_spent = false;
        // Widen until enough atoms pass the filters, nothing more matches, or the search
        // has examined its budget. Each match's facts are read in place from its entry.
        let mut window = (limit.max(1) * 4).min(SEARCH_EXAMINED_MAX);
        loop {
            let found = searcher
                .search_with_statistics_provider(
                    &query,
                    &TopDocs::with_limit(window).order_by_score(),
                    &statistics,
                )
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
            for (score, commit) in commits {
                if commit > covered {
                    continue;
                }
                let row = view.row(world, commit)?;
                let (_, entry) = crate::split_row(world, commit, row.value())?;
                let facts = view.facts(world, commit, entry)?;
                if allowed(&facts) {
                    matches.push(TextMatch {
                        commit,
                        importance: facts.importance(),
                        score,
                    });
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
        let mut compared_exactly = 0;
        let mut tail_cut = false;
        let mut tail = Vec::new();
        for (examined, atom) in view.atoms_in_log(world, covered, u64::MAX)?.enumerate() {
            if examined == SEARCH_EXAMINED_MAX {
                tail_cut = true;
                break;
            }
            let atom = atom?;
            if !allowed(&atom) {
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
