//! `engramd restore --from BACKUP --data DIR`: a backup a client wrote
//! (`engram backup`) becomes a data directory, checked three times before anything can
//! serve it: every file against the manifest's size and BLAKE3, the restored store
//! against the manifest's last commit, epoch, worlds and chain heads, and every chain
//! of every world recomputed.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use engram_capabilities::backup::{AUDIT_COPY, STORE_COPY};
use engram_store::Store;
use engram_store::backup::{MANIFEST_FILE, MANIFEST_FORMAT, Manifest, describe};

use crate::{AUDIT_FILE, STORE_FILE, ServerError};

/// What a restore restored.
pub struct Restored {
    pub last_commit: u64,
    pub worlds: usize,
    pub atoms: u64,
    pub chains: u64,
}

fn refused(reason: impl Into<String>) -> ServerError {
    ServerError::Restore {
        reason: reason.into(),
    }
}

/// A progress bar on stderr for a person at a terminal (hidden otherwise).
fn progress(total: u64, unit: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total).with_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{msg}} {{bar:40}} {{human_pos}}/{{human_len}} {unit} ({{per_sec}}, {{eta}} left)"
        ))
        .expect("a valid template"),
    );
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar
}

/// Restores the backup in `from` into the new data directory `data`.
pub fn restore(from: &Path, data: &Path) -> Result<Restored, ServerError> {
    let manifest_path = from.join(MANIFEST_FILE);
    let manifest: Manifest = std::fs::read(&manifest_path)
        .map_err(|error| format!("reading {}: {error}", manifest_path.display()))
        .and_then(|bytes| {
            serde_json::from_slice(&bytes).map_err(|error| {
                format!(
                    "{}: not a backup manifest: {error}",
                    manifest_path.display()
                )
            })
        })
        .map_err(refused)?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(refused(format!(
            "{}: format {}; this engramd restores format {MANIFEST_FORMAT}",
            manifest_path.display(),
            manifest.format
        )));
    }
    // The manifest names exactly the files a backup holds, and where each goes.
    let mut placed: Vec<(PathBuf, PathBuf)> = Vec::new();
    for file in &manifest.files {
        let target = match file.name.as_str() {
            STORE_COPY => STORE_FILE,
            AUDIT_COPY => AUDIT_FILE,
            other => {
                return Err(refused(format!(
                    "the manifest names an unknown file {other:?}"
                )));
            }
        };
        placed.push((from.join(&file.name), data.join(target)));
    }
    if !manifest.files.iter().any(|file| file.name == STORE_COPY) {
        return Err(refused("the manifest names no store file"));
    }
    if data.join(STORE_FILE).exists() {
        return Err(refused(format!(
            "{} already holds a store; restore into a new data directory",
            data.display()
        )));
    }
    let bytes: u64 = manifest.files.iter().map(|file| file.bytes).sum();
    let bar = progress(bytes, "bytes");
    bar.set_message("checking");
    for file in &manifest.files {
        let path = from.join(&file.name);
        let mut hasher = blake3::Hasher::new();
        let opened = std::fs::File::open(&path)
            .map_err(|error| refused(format!("reading {}: {error}", path.display())))?;
        let length = std::io::copy(&mut bar.wrap_read(opened), &mut hasher)
            .map_err(|error| refused(format!("reading {}: {error}", path.display())))?;
        if length != file.bytes || *hasher.finalize().as_bytes() != file.blake3 {
            return Err(refused(format!(
                "{} does not match the manifest (its size or BLAKE3 differs): the backup is damaged or incomplete",
                path.display()
            )));
        }
    }
    bar.finish_and_clear();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data)
        .map_err(|source| ServerError::DataDirectory {
            path: data.to_owned(),
            source,
        })?;
    for (source, target) in &placed {
        // Copied under a temporary name and renamed: a restore cut short leaves no
        // file that looks like a store.
        let partial = target.with_extension("restoring");
        std::fs::copy(source, &partial)
            .and_then(|_| std::fs::File::open(&partial)?.sync_all())
            .and_then(|()| std::fs::rename(&partial, target))
            .map_err(|error| refused(format!("writing {}: {error}", target.display())))?;
    }
    // The renames last through a crash once the directory that holds them is synced.
    let checked = std::fs::File::open(data)
        .and_then(|directory| directory.sync_all())
        .map_err(|error| refused(format!("syncing {}: {error}", data.display())))
        .and_then(|()| check(&manifest, data));
    if checked.is_err() {
        // Nothing that failed its checks may be served by mistake.
        for (_, target) in &placed {
            let _ = std::fs::remove_file(target);
        }
        let _ = std::fs::remove_file(data.join(STORE_FILE).with_extension("journal"));
    }
    checked
}

/// Opens the restored store in `data` and checks it against `manifest`, then every
/// chain.
fn check(manifest: &Manifest, data: &Path) -> Result<Restored, ServerError> {
    let store_path = data.join(STORE_FILE);
    let store_error = |source| ServerError::Store {
        path: store_path.clone(),
        source,
    };
    let store = Store::open(&store_path).map_err(store_error)?;
    let view = store.read().map_err(store_error)?;
    let restored = describe(&view).map_err(store_error)?;
    if (restored.last_commit, restored.epoch, &restored.worlds)
        != (manifest.last_commit, manifest.epoch, &manifest.worlds)
    {
        return Err(refused(
            "the restored store does not hold what the manifest says (last commit, epoch, worlds or chain heads differ)",
        ));
    }
    let atoms = manifest.worlds.iter().map(|world| world.atoms).sum();
    let bar = progress(manifest.worlds.len() as u64, "worlds");
    bar.set_message("verifying");
    let mut chains = 0;
    for world in &manifest.worlds {
        let report = view.verify(&world.name, None).map_err(store_error)?;
        if let Some(bad) = report.first_bad {
            return Err(refused(format!(
                "world {} failed verification: writer {} seq {}: {}",
                world.name,
                hex::encode(bad.writer),
                bad.seq,
                bad.reason
            )));
        }
        chains += report.chains;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(Restored {
        last_commit: manifest.last_commit,
        worlds: manifest.worlds.len(),
        atoms,
        chains,
    })
}
