//! Snapshots: the engine state and the read model as of one log sequence, so a restart loads
//! the newest snapshot and applies only the tail of the log instead of all history.
//!
//! Written like any file that must survive a crash: a temporary file, fsync, rename, fsync of
//! the directory. A snapshot that does not load (torn, unknown version) is skipped with a
//! warning in favour of an older one or the full log; the log stays the source of truth.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::State;
use crate::view::ReadModel;

/// Current snapshot format; others are ignored (the log is replayed instead).
pub const SNAPSHOT_VERSION: u32 = 2;
/// Snapshots kept on disk: the newest, and one older in case the newest is damaged.
const KEEP: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Encode {
        path: PathBuf,
        source: serde_json::Error,
    },
}

#[derive(Serialize)]
struct SnapshotOut<'a> {
    v: u32,
    seq: u64,
    state: &'a State,
    /// The read model's own encoding ([`ReadModel::write_snapshot`]).
    view: &'a [u8],
}

#[derive(Deserialize)]
struct SnapshotIn {
    v: u32,
    seq: u64,
    state: State,
    view: Vec<u8>,
}

/// A loaded snapshot: everything up to and including log sequence `seq`.
pub struct Loaded {
    pub seq: u64,
    pub state: State,
    pub view: ReadModel,
    pub path: PathBuf,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn file_name(seq: u64) -> String {
    format!("snapshot-{seq:020}.json")
}

/// Snapshot files in `dir`, newest first.
fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, SnapshotError> {
    let mut found = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(io(dir)(e)),
    };
    for entry in entries {
        let path = entry.map_err(io(dir))?.path();
        let seq = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("snapshot-")?.strip_suffix(".json"))
            .and_then(|n| n.parse().ok());
        if let Some(seq) = seq {
            found.push((seq, path));
        }
    }
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    Ok(found)
}

/// Writes a snapshot durably and removes all but the newest `KEEP`.
pub fn write(dir: &Path, seq: u64, state: &State, view: &[u8]) -> Result<PathBuf, SnapshotError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join(file_name(seq));
    let tmp = dir.join(format!("{}.tmp", file_name(seq)));
    let file = File::create(&tmp).map_err(io(&tmp))?;
    let mut out = BufWriter::new(file);
    serde_json::to_writer(
        &mut out,
        &SnapshotOut {
            v: SNAPSHOT_VERSION,
            seq,
            state,
            view,
        },
    )
    .map_err(|source| SnapshotError::Encode {
        path: tmp.clone(),
        source,
    })?;
    out.flush().map_err(io(&tmp))?;
    let file = out.into_inner().map_err(|e| io(&tmp)(e.into_error()))?;
    file.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, &path).map_err(io(&path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    for (_, old) in list(dir)?.into_iter().skip(KEEP) {
        let _ = fs::remove_file(old);
    }
    Ok(path)
}

/// The newest snapshot that loads, if any. Damaged or foreign ones are skipped with a
/// warning: the log can always rebuild what they held, as long as it was retained.
pub fn load_latest(dir: &Path) -> Result<Option<Loaded>, SnapshotError> {
    for (seq, path) in list(dir)? {
        let file = File::open(&path).map_err(io(&path))?;
        match serde_json::from_reader::<_, SnapshotIn>(BufReader::new(file)) {
            Ok(s) if s.v == SNAPSHOT_VERSION && s.seq == seq => {
                match ReadModel::read_snapshot(&s.view) {
                    Ok(view) => {
                        return Ok(Some(Loaded {
                            seq,
                            state: s.state,
                            view,
                            path,
                        }));
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "snapshot skipped: read model does not decode")
                    }
                }
            }
            Ok(s) => {
                tracing::warn!(path = %path.display(), version = s.v, "snapshot skipped: other version or sequence")
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "snapshot skipped: unreadable")
            }
        }
    }
    Ok(None)
}
