//! Snapshots: the engine state and the read model as of one log sequence, so a restart loads
//! the newest snapshot and applies only the tail of the log instead of all history.
//!
//! Written like any file that must survive a crash: a temporary file, fsync, rename, fsync of
//! the directory (a temporary file a crash left behind goes when the next snapshot starts).
//! A snapshot that does not load (torn, damaged, unknown version) is skipped with a warning
//! in favour of an older one or the full log; the log stays the source of truth.
//!
//! Version 2 file (`snapshot-<seq>.snap`), all integers little-endian:
//!
//! ```text
//! magic "INCDSNAP" | version u32 | seq u64 | state_len u64 | view_len u64
//! | state_crc u32 | view_crc u32 | header_crc u32      (CRC32C of the 48 bytes before it)
//! | state section (engine::snapshot_codec) | view section (ReadModel::snapshot)
//! ```
//!
//! Two sections with their own checksums so that both are encoded, checked and decoded on two
//! threads at once. Version 1 files (`snapshot-<seq>.json`, one JSON document that loaded
//! slower than replaying the log it covered) are skipped with a warning; the log rebuilds
//! them.

use std::borrow::Borrow;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::engine::State;
use crate::engine::snapshot_codec::{self, CodecError};
use crate::view::{ReadModel, ViewSnapshot, ViewSnapshotError};

/// Current snapshot format; others are ignored (the log is replayed instead).
pub const SNAPSHOT_VERSION: u32 = 2;
/// Snapshots kept on disk: the newest, and one older in case the newest is damaged.
const KEEP: usize = 2;
const MAGIC: &[u8; 8] = b"INCDSNAP";
const HEADER_LEN: usize = 52;
const EXT: &str = ".snap";
const EXT_V1: &str = ".json";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    State { path: PathBuf, source: CodecError },
    #[error("{path}: {source}")]
    View {
        path: PathBuf,
        source: ViewSnapshotError,
    },
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },
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

fn format_err(path: &Path, reason: impl Into<String>) -> SnapshotError {
    SnapshotError::Format {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn file_name(seq: u64) -> String {
    format!("snapshot-{seq:020}{EXT}")
}

/// Snapshot files in `dir` (both versions), newest first; a v2 file sorts before a v1 file
/// of the same sequence.
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
            .and_then(|n| n.strip_prefix("snapshot-"))
            .and_then(|n| n.strip_suffix(EXT).or_else(|| n.strip_suffix(EXT_V1)))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(seq) = seq {
            found.push((seq, path));
        }
    }
    found.sort_by_key(|(seq, path)| (std::cmp::Reverse(*seq), !is_v2(path)));
    Ok(found)
}

fn is_v2(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == &EXT[1..])
}

/// Runs `a` and `b` on two threads (the caller's and one more) and returns both results.
fn both<A: Send, B: Send>(
    a: impl FnOnce() -> A + Send,
    b: impl FnOnce() -> B + Send,
) -> std::io::Result<(A, B)> {
    std::thread::scope(|s| {
        let other = std::thread::Builder::new()
            .name("incidentd-snapshot-view".into())
            .spawn_scoped(s, b)?;
        let first = a();
        let second = other
            .join()
            .map_err(|_| std::io::Error::other("snapshot thread panicked"))?;
        Ok((first, second))
    })
}

fn header(seq: u64, state: (u64, u32), view: (u64, u32)) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&seq.to_le_bytes());
    h[20..28].copy_from_slice(&state.0.to_le_bytes());
    h[28..36].copy_from_slice(&view.0.to_le_bytes());
    h[36..40].copy_from_slice(&state.1.to_le_bytes());
    h[40..44].copy_from_slice(&view.1.to_le_bytes());
    let crc = crc32c::crc32c(&h[..48]);
    h[48..52].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The read model's part of a snapshot as it is encoded: its small parts
/// ([`ReadModel::snapshot_head`], or all of it from [`ReadModel::snapshot`]), then any
/// pieces of its body ([`ReadModel::snapshot_body`]), then `End`. Without `End` the
/// snapshot is abandoned.
pub enum ViewPart {
    Head(ViewSnapshot),
    Body(Vec<u8>),
    End,
}

/// Writes a snapshot durably and removes all but the newest `KEEP`. The engine state is
/// encoded first (and dropped then, if owned); then the read model's part is written as
/// `view` yields it, so a caller can encode the read model on another thread meanwhile,
/// never all of it in memory. Each body piece, once written, goes to `spent` (to be filled
/// again).
pub fn write(
    dir: &Path,
    seq: u64,
    state: impl Borrow<State>,
    view: impl IntoIterator<Item = ViewPart>,
    spent: impl FnMut(Vec<u8>),
) -> Result<PathBuf, SnapshotError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    remove_stale(dir);
    let path = dir.join(file_name(seq));
    let tmp = dir.join(format!("{}.tmp", file_name(seq)));
    if let Err(e) = write_tmp(&tmp, seq, state, view, spent) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, &path).map_err(io(&path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    for (_, old) in list(dir)?.into_iter().skip(KEEP) {
        let _ = fs::remove_file(old);
    }
    Ok(path)
}

/// Removes the temporary files of snapshots a crash interrupted: never renamed, so never
/// read, but each as large as a snapshot. One snapshot is written at a time, so any found
/// when the next starts is stale.
fn remove_stale(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for path in entries.filter_map(|e| Some(e.ok()?.path())) {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("snapshot-") && name.ends_with(".tmp") {
            let _ = fs::remove_file(&path);
        }
    }
}

/// [`write`]'s file, complete and fsynced under its temporary name. Once the state is
/// encoded its length says where the read model's part begins, so that part is written in
/// place as it arrives; the state's bytes follow, and the header, which needs both
/// sections' lengths and checksums, goes last.
fn write_tmp(
    tmp: &Path,
    seq: u64,
    state: impl Borrow<State>,
    view: impl IntoIterator<Item = ViewPart>,
    mut spent: impl FnMut(Vec<u8>),
) -> Result<(), SnapshotError> {
    // Sized for the state at hand so the buffer is never copied into a larger one while it
    // grows (capacity never written to costs no memory: the pages are not touched).
    let size = state.borrow().size();
    let mut state_bytes =
        Vec::with_capacity(usize::try_from(size).map_or(0, |n| n.saturating_mul(192)));
    snapshot_codec::write_state(state.borrow(), &mut state_bytes).map_err(|source| {
        SnapshotError::State {
            path: tmp.to_path_buf(),
            source,
        }
    })?;
    // A copy made for the snapshot (all of the engine's state) is not needed any more.
    drop(state);
    let file = File::create(tmp).map_err(io(tmp))?;
    let start = (HEADER_LEN + state_bytes.len()) as u64;
    let (mut at, mut crc) = (start, 0);
    let mut put = |bytes: &[u8]| {
        file.write_all_at(bytes, at).map_err(io(tmp))?;
        crc = crc32c::crc32c_append(crc, bytes);
        at += bytes.len() as u64;
        Ok::<(), SnapshotError>(())
    };
    let abandoned = || format_err(tmp, "the read model was not encoded");
    let mut parts = view.into_iter();
    let Some(ViewPart::Head(head)) = parts.next() else {
        return Err(abandoned());
    };
    put(&head.head().map_err(|source| SnapshotError::View {
        path: tmp.to_path_buf(),
        source,
    })?)?;
    head.body().iter().try_for_each(|piece| put(piece))?;
    drop(head);
    loop {
        match parts.next() {
            Some(ViewPart::Body(piece)) => {
                put(&piece)?;
                spent(piece);
            }
            Some(ViewPart::End) => break,
            Some(ViewPart::Head(_)) | None => return Err(abandoned()),
        }
    }
    let view = (at - start, crc);
    file.write_all_at(&state_bytes, HEADER_LEN as u64)
        .map_err(io(tmp))?;
    let state = (state_bytes.len() as u64, crc32c::crc32c(&state_bytes));
    file.write_all_at(&header(seq, state, view), 0)
        .map_err(io(tmp))?;
    file.sync_all().map_err(io(tmp))
}

/// The sequence every kept snapshot covers. Log segments through it may be deleted; deleting
/// through the newest one instead would leave the older snapshot, the fallback when the
/// newest is damaged, without the log tail it needs.
pub fn prune_through(dir: &Path) -> Result<u64, SnapshotError> {
    Ok(list(dir)?
        .into_iter()
        .filter(|(_, path)| is_v2(path))
        .map(|(seq, _)| seq)
        .min()
        .unwrap_or(0))
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// A section of a snapshot file read from its start on, without moving the file's cursor
/// (the other section's thread reads the same file), checksummed as it goes.
struct Section<'f> {
    file: &'f File,
    at: u64,
    crc: u32,
}

impl std::io::Read for Section<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        Ok(n)
    }
}

/// Reads one version 2 snapshot file, checking every length and checksum. Each section is
/// read and decoded on a thread of its own: the engine state's bytes are read whole,
/// verified, decoded and freed; the read model's are decoded as they are read, a few
/// megabytes at a time, and verified at the end (holding them all, 0.9 GB at 10M facts,
/// while the model grew put a restart's peak 0.8 GB above the model's size).
fn load(path: &Path, seq: u64) -> Result<Loaded, SnapshotError> {
    let file = File::open(path).map_err(io(path))?;
    let size = file.metadata().map_err(io(path))?.len();
    let mut head = [0u8; HEADER_LEN];
    if size >= HEADER_LEN as u64 {
        file.read_exact_at(&mut head, 0).map_err(io(path))?;
    }
    if size < HEADER_LEN as u64 || &head[0..8] != MAGIC {
        return Err(format_err(path, "not a snapshot (bad magic or too short)"));
    }
    let version = le_u32(&head[8..12]);
    if version != SNAPSHOT_VERSION {
        return Err(format_err(
            path,
            format!("snapshot version {version}, this build reads {SNAPSHOT_VERSION}"),
        ));
    }
    if crc32c::crc32c(&head[..48]) != le_u32(&head[48..52]) {
        return Err(format_err(path, "header checksum mismatch"));
    }
    let file_seq = le_u64(&head[12..20]);
    if file_seq != seq {
        return Err(format_err(
            path,
            format!("holds sequence {file_seq}, the name says {seq}"),
        ));
    }
    let (state_len, view_len) = (le_u64(&head[20..28]), le_u64(&head[28..36]));
    let body = size - HEADER_LEN as u64;
    if state_len.checked_add(view_len) != Some(body) {
        return Err(format_err(
            path,
            format!("sections of {state_len} + {view_len} bytes, file body has {body}"),
        ));
    }
    let (state_crc, view_crc) = (le_u32(&head[36..40]), le_u32(&head[40..44]));
    let section = |offset: u64, len: u64, crc: u32, name: &str| {
        let len = usize::try_from(len)
            .map_err(|_| format_err(path, format!("{name} section too large")))?;
        let mut bytes = vec![0u8; len];
        file.read_exact_at(&mut bytes, offset).map_err(io(path))?;
        if crc32c::crc32c(&bytes) != crc {
            return Err(format_err(
                path,
                format!("{name} section checksum mismatch"),
            ));
        }
        Ok(bytes)
    };
    let (state, view) = both(
        || {
            let bytes = section(HEADER_LEN as u64, state_len, state_crc, "engine state")?;
            snapshot_codec::read_state(&bytes).map_err(|source| SnapshotError::State {
                path: path.to_path_buf(),
                source,
            })
        },
        || {
            let mut src = Section {
                file: &file,
                at: HEADER_LEN as u64 + state_len,
                crc: 0,
            };
            let view = ReadModel::read_snapshot_from(&mut src, view_len).map_err(|source| {
                SnapshotError::View {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
            // Checked once decoding has read it all: damage that still decodes is refused.
            if src.crc != view_crc {
                return Err(format_err(path, "read model section checksum mismatch"));
            }
            Ok(view)
        },
    )
    .map_err(io(path))?;
    Ok(Loaded {
        seq,
        state: state?,
        view: view?,
        path: path.to_path_buf(),
    })
}

/// The newest snapshot that loads, if any. Damaged or foreign ones are skipped with a
/// warning: the log can always rebuild what they held, as long as it was retained.
pub fn load_latest(dir: &Path) -> Result<Option<Loaded>, SnapshotError> {
    for (seq, path) in list(dir)? {
        if !is_v2(&path) {
            tracing::warn!(path = %path.display(), "snapshot skipped: version 1 (JSON) is no longer read; the log is replayed instead");
            continue;
        }
        match load(&path, seq) {
            Ok(loaded) => return Ok(Some(loaded)),
            Err(e) => tracing::warn!(error = %e, "snapshot skipped"),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_round_trip_and_damage_is_skipped() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        let mut state = State::default();
        state.now = 42;
        state.rules_hash = "abc".into();
        let view = ReadModel::default().snapshot().expect("encode view");
        let path =
            write(dir, 7, &state, [ViewPart::Head(view), ViewPart::End], drop).expect("write");
        let loaded = load_latest(dir).expect("load").expect("a snapshot");
        assert_eq!((loaded.seq, &loaded.state), (7, &state));

        // A newer v1 file is skipped; a damaged newer v2 file too.
        fs::write(dir.join("snapshot-00000000000000000009.json"), b"{}").expect("v1");
        let mut damaged = fs::read(&path).expect("read");
        let last = damaged.len() - 1;
        damaged[last] ^= 0x40;
        fs::write(dir.join(file_name(8)), &damaged).expect("damaged");
        let loaded = load_latest(dir).expect("load").expect("a snapshot");
        assert_eq!(loaded.seq, 7);

        // Every truncation of a good file is an error, never a panic.
        let good = fs::read(&path).expect("read");
        for cut in [0, 7, 51, 52, good.len() - 1] {
            fs::write(&path, &good[..cut]).expect("cut");
            assert!(load(&path, 7).is_err(), "cut at {cut}");
        }
    }

    /// A snapshot half written when the process died is removed by the next one.
    #[test]
    fn a_crashed_snapshots_temporary_file_goes_with_the_next_snapshot() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        let stale = dir.join(format!("{}.tmp", file_name(2)));
        fs::write(&stale, b"INCDSNAP half of it").expect("stale");
        fs::write(dir.join("notes.tmp"), b"not ours").expect("other");
        let view = ReadModel::default().snapshot().expect("view");
        let parts = [ViewPart::Head(view), ViewPart::End];
        let path = write(dir, 3, State::default(), parts, drop).expect("write");
        assert!(!stale.exists(), "the stale temporary file is gone");
        assert!(path.exists() && dir.join("notes.tmp").exists());
    }

    /// The read model's part comes after the state is written; when it does not come whole,
    /// the half-written file goes and nothing else changes.
    #[test]
    fn a_snapshot_without_its_whole_read_model_leaves_nothing_behind() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        let state = State::default();
        let view = || ReadModel::default().snapshot().expect("view");
        write(
            dir,
            3,
            &state,
            [ViewPart::Head(view()), ViewPart::End],
            drop,
        )
        .expect("write");
        let before: Vec<_> = list(dir).expect("list");

        let cut_short = [
            vec![],
            vec![ViewPart::Body(vec![1, 2, 3])],
            vec![ViewPart::Head(view()), ViewPart::Body(vec![0; 10])],
        ];
        for (seq, parts) in (4..).zip(cut_short) {
            let err = write(dir, seq, &state, parts, drop).expect_err("no whole read model");
            assert!(
                err.to_string().contains("read model was not encoded"),
                "{err}"
            );
            let files: Vec<_> = fs::read_dir(dir)
                .expect("dir")
                .map(|e| e.expect("entry").file_name())
                .collect();
            assert_eq!(files.len(), 1, "only the earlier snapshot: {files:?}");
            assert_eq!(list(dir).expect("list"), before);
        }
        assert_eq!(load_latest(dir).expect("load").expect("kept").seq, 3);

        // A read model handed over as its head, then its body's pieces, loads too.
        let model = ReadModel::default();
        let mut parts = vec![ViewPart::Head(model.snapshot_head())];
        model
            .snapshot_body(|piece| {
                parts.push(ViewPart::Body(piece));
                Vec::new()
            })
            .expect("body");
        parts.push(ViewPart::End);
        write(dir, 9, &state, parts, drop).expect("write in pieces");
        assert_eq!(load_latest(dir).expect("load").expect("newest").seq, 9);
    }
}
