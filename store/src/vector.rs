//! Similarity search: one HNSW graph (hnsw_rs) per world, derived from the store and
//! never the only copy of anything. An indexer thread catches it up from the worlds'
//! entries after every commit; a search covers what the graph holds and compares the
//! atoms the graph does not hold yet exactly, so no answer is ever stale, and the answer
//! says when part of it was not served by the graph.
//!
//! Vectors are normalised for the index (atoms keep what the writer sent) and compared
//! by dot product, which is then the cosine similarity. Filters run inside the graph
//! search (hnsw_rs filters), so a filtered search for k returns k when k matches exist.
//!
//! Whatever a writer sends, nothing it writes can take the index down: units are scaled
//! a hair below 1 so that hnsw_rs's distance kernel, which asserts a dot product of at
//! most 1.000002 whatever the summation order, never sees more than 1 ([`normalized`]);
//! and a panic inside hnsw_rs is contained: a batch that panics is inserted again atom
//! by atom, an atom that still panics is left out of the graph and compared exactly,
//! and a graph search that panics is answered by comparing exactly.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use std::path::Path;

use hnsw_rs::prelude::{AnnT, DistDot, Hnsw, HnswIo};

use crate::atom::{AtomKind, Facts, PublicKey, TimeInterval};
use crate::error::StoreError;
use crate::limits::SEARCH_EXAMINED_MAX;
use crate::progress::Progress;
use crate::tables::WORLDS;
use crate::{Atom, Store};
use redb::ReadableTable;

/// Links per node and layer.
const GRAPH_LINKS: usize = 24;
/// Candidates explored while building.
const GRAPH_EF_CONSTRUCTION: usize = 200;
/// Layers of the graph.
const GRAPH_LAYERS: usize = 16;
/// Candidates explored while searching, at least (and at least twice those asked for).
const SEARCH_EF_MIN: usize = 64;
/// A filter that lets through at most 1 / this of a world's atoms is answered by
/// comparing those atoms exactly instead of walking the graph.
const SELECTIVE_FILTER_DIVISOR: usize = 5;
/// Atoms sampled to estimate a filter's selectivity.
const SELECTIVITY_SAMPLE: usize = 512;
/// First line of a persisted index's manifest. Version 2 scales units by
/// [`unit_scale`]; version 3 keeps a covered commit per world. Older snapshots are
/// rebuilt.
const PERSISTED_FORMAT: &str = "engram vector index v3";
/// The manifest: format, then one `basename covered world` line per graph.
const MANIFEST: &str = "manifest";
/// Atoms the indexer reads and inserts at a time.
const INDEX_BATCH_ATOMS: usize = 4096;

/// What filters need to know of an atom, held beside the graph so that filtering inside
/// the search never touches the store.
#[derive(Clone, Debug)]
pub struct AtomFacts {
    pub kind: AtomKind,
    pub labels: Box<[String]>,
    pub writer: PublicKey,
    pub importance: f32,
    pub commit: u64,
    /// Boxed: most atoms claim no validity, and these facts are kept for every atom.
    pub valid_time: Option<Box<TimeInterval>>,
}

impl Facts for AtomFacts {
    fn kind(&self) -> AtomKind {
        self.kind
    }
    fn writer(&self) -> &PublicKey {
        &self.writer
    }
    fn importance(&self) -> f32 {
        self.importance
    }
    fn commit(&self) -> u64 {
        self.commit
    }
    fn valid_time(&self) -> Option<TimeInterval> {
        self.valid_time.as_deref().copied()
    }
    fn any_label(&self, test: &mut dyn FnMut(&str) -> bool) -> bool {
        self.labels.iter().any(|label| test(label))
    }
}

impl AtomFacts {
    pub fn of(atom: &Atom) -> AtomFacts {
        AtomFacts {
            kind: atom.content.kind,
            labels: atom.content.labels.clone().into_boxed_slice(),
            writer: atom.writer,
            importance: atom.content.importance,
            commit: atom.commit,
            valid_time: atom.content.valid_time.map(Box::new),
        }
    }
}

/// One world's graph and the facts of the atoms in it. The graph's data id of an atom
/// is its position in `facts`, so a filter finds the facts by indexing, not hashing.
struct WorldGraph {
    graph: Hnsw<'static, f32, DistDot>,
    facts: RwLock<Vec<AtomFacts>>,
    /// The unit vectors by data id, for exact comparison when a filter is so selective
    /// that walking the graph would visit most of it.
    units: RwLock<Vec<Box<[f32]>>>,
    /// What hnsw_rs panicked on inserting; empty unless it did.
    left_out: RwLock<LeftOut>,
    /// Every vector of the world committed up to here is in the graph.
    covered: AtomicU64,
}

/// Data ids the graph must not answer for, after hnsw_rs panicked inserting them.
#[derive(Default)]
struct LeftOut {
    /// Every such id: a batch that panicked may be half in the graph, so its ids are
    /// hidden and its atoms inserted again one by one under new ids.
    hidden: HashSet<usize>,
    /// The ids among them that hold the only copy of their atom (its insertion alone
    /// panicked too): compared exactly by every search.
    exact: Vec<usize>,
}

/// A match of a similarity search.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Similar {
    pub commit: u64,
    /// The atom's importance, for ranking before the atom is read.
    pub importance: f32,
    pub similarity: f32,
}

/// What a similarity search found.
#[derive(Clone, Debug, PartialEq)]
pub struct SimilarityAnswer {
    /// Best first, at most the number asked for.
    pub matches: Vec<Similar>,
    /// Atoms compared exactly because the graph did not hold them yet.
    pub compared_exactly: usize,
    /// Atoms newer than the graph were left unsearched: there were more than the
    /// search's budget.
    pub tail_cut: bool,
}

/// Every world's graph, and for each the commit up to which it holds every vector of
/// its world. Per world: in a fleet a world's atoms arrive with the commits its owner
/// gave them, which may be older than the commits of atoms already here in other worlds.
pub struct VectorIndex {
    worlds: RwLock<HashMap<String, Arc<WorldGraph>>>,
    /// Set at shutdown: a catch-up in progress stops at its next batch.
    stopping: AtomicBool,
    /// False once a catch-up stopped in the middle: the graphs then hold atoms past the
    /// covered commit, and must not be persisted as covering exactly it.
    consistent: AtomicBool,
}

/// The unit vector of `vector`, scaled by [`unit_scale`]; `None` for a zero vector.
/// Computed in f64 and rounded once, so the result does not depend on the order in
/// which the writer's components sum.
pub fn normalized(vector: &[f32]) -> Option<Vec<f32>> {
    let norm = vector
        .iter()
        .map(|value| f64::from(*value) * f64::from(*value))
        .sum::<f64>()
        .sqrt();
    if !(norm > 0.0 && norm.is_finite()) {
        return None;
    }
    let factor = unit_scale(vector.len()) / norm;
    Some(
        vector
            .iter()
            .map(|value| (f64::from(*value) * factor) as f32)
            .collect(),
    )
}

/// How far below 1 the units of `dimensions` components are scaled, so that the dot
/// product of any two, summed in f32 in any order (sequential, SIMD lanes, fused), is at
/// most 1. Rounding a unit's components to f32 leaves its norm² within (1 + u)², u =
/// 2⁻²⁴, and summing n products in any order errs by at most γₙ = nu / (1 − nu) of
/// their magnitude (Higham, Accuracy and Stability of Numerical Algorithms, §3.1).
fn unit_scale(dimensions: usize) -> f64 {
    let unit_roundoff = f64::from(f32::EPSILON) / 2.0;
    // The components' own rounding and the scale's count as two more operations.
    let operations = dimensions as f64 + 2.0;
    let gamma = operations * unit_roundoff / (1.0 - operations * unit_roundoff);
    1.0 / ((1.0 + unit_roundoff).powi(2) * (1.0 + gamma)).sqrt()
}

/// The cosine similarity of two units of `dimensions` components whose dot product is
/// `dot`: the scale taken out again.
fn cosine(dot: f32, dimensions: usize) -> f32 {
    let scale = unit_scale(dimensions);
    ((f64::from(dot) / (scale * scale)) as f32).clamp(-1.0, 1.0)
}

/// Runs an hnsw_rs operation, which may panic (where it cannot open or parse a file, or
/// where an assertion of its distance kernel fails), with both its error and a panic
/// turned into a message.
fn contained<T, E: std::fmt::Display>(
    operation: impl FnOnce() -> Result<T, E>,
) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(operation)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("hnsw_rs panicked".into()),
    }
}

/// Dot product in eight independent lanes, which the compiler turns into SIMD.
fn dot(left: &[f32], right: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (left_chunks, right_chunks) = (left.chunks_exact(8), right.chunks_exact(8));
    let tail: f32 = left_chunks
        .remainder()
        .iter()
        .zip(right_chunks.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (left, right) in left_chunks.zip(right_chunks) {
        for lane in 0..8 {
            lanes[lane] += left[lane] * right[lane];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

impl WorldGraph {
    /// After inserting `slices` as a batch panicked: hides their ids (the batch may be
    /// half in the graph) and inserts each atom again alone under a new id; an atom whose
    /// insertion panics again is compared exactly by every search instead.
    fn insert_one_by_one(&self, world: &str, slices: &[(&[f32], usize)]) {
        self.left_out
            .write()
            .expect("never poisoned")
            .hidden
            .extend(slices.iter().map(|(_, id)| *id));
        for (unit, id) in slices {
            let new_id = {
                let mut facts = self.facts.write().expect("never poisoned");
                let mut units = self.units.write().expect("never poisoned");
                let copy = facts[*id].clone();
                facts.push(copy);
                units.push(Box::from(*unit));
                facts.len() - 1
            };
            let inserted = contained(|| {
                self.graph.insert_slice((unit, new_id));
                Ok::<_, String>(())
            });
            if let Err(error) = inserted {
                tracing::error!(%error, world, commit = self.facts.read().expect("never poisoned")[new_id].commit,
                    "hnsw_rs cannot take this atom's vector; it is compared exactly instead");
                let mut left_out = self.left_out.write().expect("never poisoned");
                left_out.hidden.insert(new_id);
                left_out.exact.push(new_id);
            }
        }
    }
}

impl Default for VectorIndex {
    fn default() -> Self {
        VectorIndex::new()
    }
}

impl VectorIndex {
    /// An empty index; [`VectorIndex::catch_up`] fills it from the store.
    pub fn new() -> VectorIndex {
        VectorIndex {
            worlds: RwLock::new(HashMap::new()),
            stopping: AtomicBool::new(false),
            consistent: AtomicBool::new(true),
        }
    }

    /// Asks a catch-up in progress to stop at its next batch (the node is shutting down;
    /// the index is derived and rebuilt at the next start).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// The commit up to which every vector of `world` is in its graph.
    pub fn covered(&self, world: &str) -> u64 {
        self.graph(world)
            .map_or(0, |graph| graph.covered.load(Ordering::Acquire))
    }

    /// How many worlds have a graph.
    pub fn worlds(&self) -> usize {
        self.worlds.read().expect("never poisoned").len()
    }

    /// How many atoms the graphs hold.
    pub fn atoms(&self) -> usize {
        let worlds = self.worlds.read().expect("never poisoned");
        (worlds.values())
            .map(|graph| graph.facts.read().expect("never poisoned").len())
            .sum()
    }

    fn graph(&self, world: &str) -> Option<Arc<WorldGraph>> {
        self.worlds
            .read()
            .expect("the vector index lock is never poisoned")
            .get(world)
            .cloned()
    }

    fn graph_or_new(
        &self,
        world: &str,
        expected_atoms: usize,
        loaded: Option<WorldGraph>,
    ) -> Arc<WorldGraph> {
        let mut worlds = self
            .worlds
            .write()
            .expect("the vector index lock is never poisoned");
        worlds
            .entry(world.to_owned())
            .or_insert_with(|| {
                Arc::new(loaded.unwrap_or_else(|| WorldGraph {
                    graph: Hnsw::new(
                        GRAPH_LINKS,
                        expected_atoms.max(1024),
                        GRAPH_LAYERS,
                        GRAPH_EF_CONSTRUCTION,
                        DistDot {},
                    ),
                    facts: RwLock::new(Vec::new()),
                    units: RwLock::new(Vec::new()),
                    left_out: RwLock::default(),
                    covered: AtomicU64::new(0),
                }))
            })
            .clone()
    }

    /// Writes every graph into `directory` (replacing what is there) with the commit they
    /// cover, so the next start loads them instead of rebuilding. Written beside, then
    /// renamed into place: a crash leaves the previous snapshot or none, never half of
    /// one. Does nothing if a catch-up was cut short.
    pub fn persist(&self, directory: &Path) -> Result<bool, StoreError> {
        if !self.consistent.load(Ordering::Acquire) {
            return Ok(false);
        }
        let io = |error: std::io::Error| StoreError::TransactionFailed {
            reason: format!(
                "persisting the vector index in {}: {error}",
                directory.display()
            ),
        };
        let staging = directory.with_extension("staging");
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(io)?;
        let worlds = self.worlds.read().expect("never poisoned");
        // A graph without some of its atoms would not load as covering them.
        if worlds.values().any(|graph| {
            !graph
                .left_out
                .read()
                .expect("never poisoned")
                .hidden
                .is_empty()
        }) {
            return Ok(false);
        }
        let mut manifest = format!("{PERSISTED_FORMAT}\n");
        for (number, (name, graph)) in worlds.iter().enumerate() {
            let basename = format!("world-{number}");
            contained(|| graph.graph.file_dump(&staging, &basename)).map_err(|error| {
                StoreError::TransactionFailed {
                    reason: format!("dumping the graph of {name:?}: {error}"),
                }
            })?;
            let covered = graph.covered.load(Ordering::Acquire);
            manifest.push_str(&format!("{basename} {covered} {name}\n"));
        }
        std::fs::write(staging.join(MANIFEST), manifest).map_err(io)?;
        let _ = std::fs::remove_dir_all(directory);
        std::fs::rename(&staging, directory).map_err(io)?;
        Ok(true)
    }

    /// Loads into this empty index the graphs `persist` wrote, and rebuilds the facts
    /// beside them from the store (cheap next to building graphs). A snapshot that does
    /// not match the store (another format, a commit the store does not have, a
    /// different number of vectors) is ignored: the index stays empty and is rebuilt.
    /// Searches meanwhile are exact: the covered commit moves only at the end.
    pub fn load_persisted(&self, directory: &Path, store: &Store) {
        match self.load_snapshot(directory, store) {
            Ok(true) => {}
            Ok(false) => self.clear(),
            Err(error) => {
                tracing::warn!(%error, "the persisted vector index is unusable; rebuilding it");
                self.clear();
            }
        }
    }

    fn clear(&self) {
        self.worlds.write().expect("never poisoned").clear();
    }

    fn load_snapshot(&self, directory: &Path, store: &Store) -> Result<bool, StoreError> {
        let Ok(manifest) = std::fs::read_to_string(directory.join(MANIFEST)) else {
            return Ok(false);
        };
        let mut lines = manifest.lines();
        if lines.next() != Some(PERSISTED_FORMAT) {
            return Ok(false);
        }
        let view = store.read()?;
        for line in lines {
            let mut fields = line.splitn(3, ' ');
            let (Some(basename), Some(covered), Some(name)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Ok(false);
            };
            let Ok(covered) = covered.parse::<u64>() else {
                return Ok(false);
            };
            if view.world(name)?.is_none() || covered > view.world_last_commit(name)? {
                return Ok(false);
            }
            // The loaded graph refers to its loader for as long as it lives: the loader is
            // kept for the life of the process (one small struct per world and start). A
            // damaged snapshot may make hnsw_rs panic: contain it, then rebuild.
            let graph: Hnsw<'static, f32, DistDot> = contained(|| {
                let loader: &'static mut HnswIo =
                    Box::leak(Box::new(HnswIo::new(directory, basename)));
                loader.load_hnsw::<f32, DistDot>()
            })
            .map_err(|error| StoreError::Corrupt {
                what: format!("vector index of {name:?}: {error}"),
            })?;
            let mut facts = Vec::with_capacity(graph.get_nb_point());
            let mut units = Vec::with_capacity(graph.get_nb_point());
            for atom in view.atoms_in_log(name, 0, covered)? {
                let atom = atom?;
                if let Some(unit) = normalized(&atom.content.vector) {
                    facts.push(AtomFacts::of(&atom));
                    units.push(unit.into_boxed_slice());
                }
            }
            if facts.len() != graph.get_nb_point() {
                return Ok(false);
            }
            self.graph_or_new(
                name,
                facts.len(),
                Some(WorldGraph {
                    graph,
                    facts: RwLock::new(facts),
                    units: RwLock::new(units),
                    left_out: RwLock::default(),
                    covered: AtomicU64::new(covered),
                }),
            );
        }
        Ok(true)
    }

    /// Inserts every vector each world committed after its covered commit, world by
    /// world in batches; returns how many it inserted. Called by the indexer thread only.
    pub fn catch_up(&self, store: &Store) -> Result<usize, StoreError> {
        let view = store.read()?;
        let worlds = view.table(WORLDS)?;
        let mut inserted = 0;
        let covered: HashMap<String, u64> = (self.worlds.read().expect("never poisoned"))
            .iter()
            .map(|(name, graph)| (name.clone(), graph.covered.load(Ordering::Acquire)))
            .collect();
        let mut progress = Progress::new(
            "vector",
            crate::progress::behind(&view, &worlds, &covered, true)?,
        );
        for entry in worlds.iter()? {
            let (name, record) = entry?;
            let (name, (_, world_atoms, dimension)) = (name.value(), record.value());
            if dimension == 0 {
                continue;
            }
            let target = view.world_last_commit(name)?;
            let from = self.covered(name);
            if target <= from {
                continue;
            }
            let graph = self.graph_or_new(name, world_atoms as usize, None);
            let mut batch: Vec<Vec<f32>> = Vec::with_capacity(INDEX_BATCH_ATOMS);
            let mut facts = Vec::with_capacity(INDEX_BATCH_ATOMS);
            // Facts first, then the graph: a search that meets a new node finds its facts.
            let flush = |batch: &mut Vec<Vec<f32>>, facts: &mut Vec<AtomFacts>| {
                let first_id = {
                    let mut known = graph.facts.write().expect("never poisoned");
                    let mut units = graph.units.write().expect("never poisoned");
                    let first_id = known.len();
                    known.append(facts);
                    units.extend(batch.iter().map(|unit| unit.clone().into_boxed_slice()));
                    first_id
                };
                let slices: Vec<(&[f32], usize)> = batch
                    .iter()
                    .enumerate()
                    .map(|(offset, vector)| (vector.as_slice(), first_id + offset))
                    .collect();
                let inserted = contained(|| {
                    graph.graph.parallel_insert_slice(&slices);
                    Ok::<_, String>(())
                });
                if let Err(error) = inserted {
                    tracing::error!(%error, world = name, "inserting a batch of vectors failed; inserting its atoms one by one");
                    graph.insert_one_by_one(name, &slices);
                }
                batch.clear();
            };
            for atom in view.atoms_in_log(name, from, target)? {
                let atom = atom?;
                progress.advance(1);
                let Some(unit) = normalized(&atom.content.vector) else {
                    continue;
                };
                facts.push(AtomFacts::of(&atom));
                batch.push(unit);
                inserted += 1;
                if batch.len() == INDEX_BATCH_ATOMS {
                    flush(&mut batch, &mut facts);
                    if self.stopping.load(Ordering::Acquire) {
                        // The world's covered commit stays where it was: nothing is
                        // claimed that was not inserted.
                        self.consistent.store(false, Ordering::Release);
                        return Ok(inserted);
                    }
                }
            }
            if !batch.is_empty() {
                flush(&mut batch, &mut facts);
            }
            graph.covered.store(target, Ordering::Release);
        }
        Ok(inserted)
    }

    /// The `limit` atoms of `world` most similar to `vector` among those for which
    /// `allowed` holds: from the graph for what it covers, compared exactly for the rest.
    pub fn search(
        &self,
        store: &Store,
        world: &str,
        vector: &[f32],
        limit: usize,
        allowed: &(dyn Fn(&dyn Facts) -> bool + Sync),
    ) -> Result<SimilarityAnswer, StoreError> {
        let Some(query) = normalized(vector) else {
            return Err(StoreError::InvalidQuery {
                reason: "the query vector is all zeros or not finite".into(),
            });
        };
        let view = store.read()?;
        let Some(info) = view.world(world)? else {
            return Err(StoreError::WorldNotFound {
                world: world.to_owned(),
            });
        };
        if info.dimension == 0 {
            return Ok(SimilarityAnswer {
                matches: Vec::new(),
                compared_exactly: 0,
                tail_cut: false,
            });
        }
        if info.dimension as usize != query.len() {
            return Err(StoreError::InvalidQuery {
                reason: format!(
                    "the query vector has {} dimensions; world {world:?} holds vectors of {}",
                    query.len(),
                    info.dimension
                ),
            });
        }
        // Read the covered commit before the graph: the graph may hold more than it says,
        // never less, and an atom in both is deduplicated below.
        let covered = self.covered(world);
        let mut matches = Vec::with_capacity(limit * 2);
        if let Some(graph) = self.graph(world) {
            let facts = graph.facts.read().expect("never poisoned");
            let units = graph.units.read().expect("never poisoned");
            let left_out = graph.left_out.read().expect("never poisoned");
            let passes = |id: usize| facts[id].commit <= covered && allowed(&facts[id]);
            let in_graph = |id: usize| left_out.hidden.is_empty() || !left_out.hidden.contains(&id);
            let exactly = |id: usize| Similar {
                commit: facts[id].commit,
                importance: facts[id].importance,
                similarity: cosine(dot(&query, &units[id]), query.len()),
            };
            // Estimate the filter's selectivity from an even sample of the atoms.
            let step = (facts.len() / SELECTIVITY_SAMPLE).max(1);
            let sampled = (0..facts.len()).step_by(step).count();
            let sampled_passing = (0..facts.len())
                .step_by(step)
                .filter(|id| passes(*id))
                .count();
            // Few atoms pass: comparing them all is exact and cheaper than a graph walk
            // that would reject most of what it visits.
            let selective = sampled_passing * SELECTIVE_FILTER_DIVISOR <= sampled;
            let walked = if selective {
                None
            } else {
                let filter = |id: &usize| *id < facts.len() && in_graph(*id) && passes(*id);
                contained(|| {
                    Ok::<_, String>(graph.graph.search_filter(
                        &query,
                        limit,
                        SEARCH_EF_MIN.max(2 * limit),
                        Some(&filter),
                    ))
                })
                .map_err(|error| {
                    tracing::error!(%error, world, "a graph search failed; comparing exactly");
                })
                .ok()
            };
            match walked {
                Some(found) => matches.extend(found.into_iter().map(|neighbour| Similar {
                    commit: facts[neighbour.d_id].commit,
                    importance: facts[neighbour.d_id].importance,
                    similarity: cosine(1.0 - neighbour.distance, query.len()),
                })),
                None => matches.extend(
                    (0..facts.len())
                        .filter(|id| in_graph(*id) && passes(*id))
                        .map(exactly),
                ),
            }
            // What hnsw_rs could not take is compared exactly.
            matches.extend(
                left_out
                    .exact
                    .iter()
                    .copied()
                    .filter(|id| passes(*id))
                    .map(exactly),
            );
        }
        // The tail the graph does not cover yet is compared exactly, from the store.
        let mut compared_exactly = 0;
        let mut tail_cut = false;
        for (examined, atom) in view.atoms_in_log(world, covered, u64::MAX)?.enumerate() {
            if examined == SEARCH_EXAMINED_MAX {
                tail_cut = true;
                break;
            }
            let atom = atom?;
            if !allowed(&atom) {
                continue;
            }
            let Some(unit) = normalized(&atom.content.vector) else {
                continue;
            };
            // Counted only when visible: the count must not tell about hidden atoms.
            compared_exactly += 1;
            matches.push(Similar {
                commit: atom.commit,
                importance: atom.content.importance,
                similarity: cosine(dot(&query, &unit), query.len()),
            });
        }
        // The graph answered only commits up to `covered` and the tail holds only later
        // ones, so no atom appears twice.
        matches.sort_by(|left, right| right.similarity.total_cmp(&left.similarity));
        matches.truncate(limit);
        Ok(SimilarityAnswer {
            matches,
            compared_exactly,
            tail_cut,
        })
    }
}
