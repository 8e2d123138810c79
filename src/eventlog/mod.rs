//! Event log: a local, segmented, append-only log of opaque byte records, and incidentd's
//! durability boundary. A caller acknowledges ingest only after [`EventLog::sync`] returned Ok.
//!
//! Records are numbered by a global sequence number (`seq`), starting at 1 and contiguous
//! across segments. The directory holds segment files named `{first_seq:020}.seg`:
//!
//! - header (20 bytes): magic `INCDLOG\0`, format version `u32` LE, segment id `u64` LE
//!   (= first seq of the segment);
//! - records: `word: u32 LE`, `crc: u32 LE`, payload. In version 2 the word's low 31 bits
//!   are the payload length and its top bit says "more records of this commit group
//!   follow"; version 1 (written before commit groups were marked) has the length only, so
//!   every record is a group of its own. `crc` is CRC32C over the word and the payload,
//!   seeded with the CRC32C of the segment id so that stale bytes from another segment never
//!   validate.
//!
//! A commit group is the records appended between two [`EventLog::sync`] calls. It is the
//! unit of durability: a group is replayed whole or not at all, so a crash in the middle of
//! writing one never leaves half of a decision in the log (an alert received but not yet
//! attached to its incident, say). A group never spans segments: the log rolls only between
//! groups, so a segment may exceed `segment_bytes` by up to one group.
//!
//! Recovery follows Kafka/etcd practice: sealed segments must be perfect (any damage fails
//! open loudly); only the tail of the last segment, which may hold an unacknowledged torn
//! group, is truncated, back to the end of its last complete group.
//!
//! Write failures are handled by what they leave behind:
//!
//! - A failed fsync (`sync_data`, `sync_all`, directory sync) is fail-stop. The kernel may
//!   have dropped the dirty pages (and cleared the error), so nothing written since the last
//!   good fsync can be trusted and a retried fsync could "succeed" without the data on disk.
//!   The log refuses every later call with [`LogError::Stopped`]; restart recovers it.
//! - A failed write (ENOSPC, EIO, or a short write that then errors) is retryable: no fsync
//!   vouched for those bytes, so none was acknowledged. `sync` returns
//!   [`LogError::WriteFailed`] after truncating the segment back to its last durable length
//!   and fsyncing that, dropping the buffered group and giving its seqs back (`next_seq`
//!   returns to the first seq not yet durable). Once space returns, a later `append` +
//!   `sync` succeeds. If the rollback itself fails, the log stops.
//! - A short write alone is no error: writing continues until the whole buffer is written.
//! - Creating a segment at a roll is fail-stop on any error: it happens once per
//!   `segment_bytes`, and the next open repairs a half-created segment.
//!
//! Every write-path file operation goes through [`Storage`] so tests can inject these faults
//! ([`FaultyStorage`]). Recovery at open uses `std::fs` directly.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

const MAGIC: &[u8; 8] = b"INCDLOG\0";
/// Version of the segments this build writes; it reads 1 and 2.
const VERSION: u32 = 2;
const HEADER_LEN: u64 = 20;
const FRAME_LEN: u64 = 8;
/// Top bit of a version 2 record's length word: more records of its commit group follow.
const MORE: u32 = 1 << 31;

/// Where and how the log is stored.
#[derive(Clone, Debug)]
pub struct LogConfig {
    pub dir: PathBuf,
    /// A segment is rolled before a record would take it past this size (unless it is empty).
    pub segment_bytes: u64,
    /// Largest payload accepted; a larger length field on disk is never allocated.
    pub max_record_bytes: u32,
    /// Write-path file operations; tests swap in [`FaultyStorage`].
    pub storage: Arc<dyn Storage>,
}

impl LogConfig {
    /// Defaults: 64 MiB segments, 16 MiB records, [`RealStorage`].
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LogConfig {
            dir: dir.into(),
            segment_bytes: 64 << 20,
            max_record_bytes: 16 << 20,
            storage: Arc::new(RealStorage),
        }
    }
}

/// The file-system operations the writer uses, so tests can inject faults into the write
/// path. [`RealStorage`] is the default.
pub trait Storage: Send + Sync + std::fmt::Debug + 'static {
    /// Creates a new, empty segment file opened for appending; fails if it already exists.
    /// The caller writes the header and syncs.
    fn create_segment(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>>;
    /// Opens an existing segment file for appending.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>>;
    /// Fsyncs a directory, making a created file's entry durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// A segment file opened for appending: every write goes to the end of the file.
pub trait SegmentFile: Send + std::fmt::Debug {
    /// Appends a prefix of `buf`; may be short.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;
    fn sync_data(&mut self) -> io::Result<()>;
    fn sync_all(&mut self) -> io::Result<()>;
    /// Truncates the file; rolls back a failed write.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

/// [`Storage`] on the real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealStorage;

impl Storage for RealStorage {
    fn create_segment(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(path)?;
        Ok(Box::new(file))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        Ok(Box::new(OpenOptions::new().append(true).open(path)?))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        fsync_dir(dir)
    }
}

impl SegmentFile for File {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Write::write(self, buf)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn sync_all(&mut self) -> io::Result<()> {
        File::sync_all(self)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
}

/// [`RealStorage`] with faults injected by a plan the test may change at any time (also
/// from another thread), so failure handling is tested against real files. Faults apply
/// to files already open, too. Counters count calls, failed ones included.
#[derive(Debug)]
pub struct FaultyStorage {
    faults: Arc<Faults>,
}

#[derive(Debug, Default)]
struct Faults {
    plan: Mutex<Plan>,
    writes: AtomicU64,
    syncs: AtomicU64,
    dir_syncs: AtomicU64,
}

#[derive(Debug, Default)]
struct Plan {
    /// Bytes still accepted, then every write fails with the error.
    write_error: Option<(u64, i32)>,
    sync_error: Option<i32>,
    dir_sync_error: Option<i32>,
    short_writes: Option<usize>,
}

impl Faults {
    fn plan(&self) -> std::sync::MutexGuard<'_, Plan> {
        // A test that panicked while holding the lock leaves a plan that is still valid.
        self.plan.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl FaultyStorage {
    /// `raw_os_error` for "no space left on device".
    pub const ENOSPC: i32 = 28;
    /// `raw_os_error` for "input/output error".
    pub const EIO: i32 = 5;

    /// No faults until the test asks for them.
    pub fn new() -> Arc<FaultyStorage> {
        Arc::new(FaultyStorage {
            faults: Arc::default(),
        })
    }

    /// Every write fails with `raw_os_error` until [`clear`](Self::clear).
    pub fn fail_writes(&self, raw_os_error: i32) {
        self.fail_writes_after(0, raw_os_error);
    }

    /// Like a filling disk: the next `bytes` bytes are written (the write crossing the
    /// limit is short), then every write fails with `raw_os_error` until cleared.
    pub fn fail_writes_after(&self, bytes: u64, raw_os_error: i32) {
        self.faults.plan().write_error = Some((bytes, raw_os_error));
    }

    /// Every `sync_data`, `sync_all` and directory sync fails until cleared.
    pub fn fail_syncs(&self, raw_os_error: i32) {
        let mut plan = self.faults.plan();
        plan.sync_error = Some(raw_os_error);
        plan.dir_sync_error = Some(raw_os_error);
    }

    /// Only directory syncs fail until cleared (a fault while creating a segment).
    pub fn fail_dir_syncs(&self, raw_os_error: i32) {
        self.faults.plan().dir_sync_error = Some(raw_os_error);
    }

    /// Every write accepts at most `max_bytes` bytes (0: writes accept nothing).
    pub fn short_writes(&self, max_bytes: usize) {
        self.faults.plan().short_writes = Some(max_bytes);
    }

    /// Removes every fault; counters keep counting.
    pub fn clear(&self) {
        *self.faults.plan() = Plan::default();
    }

    /// `write` calls on segment files.
    pub fn writes(&self) -> u64 {
        self.faults.writes.load(Ordering::SeqCst)
    }

    /// `sync_data` and `sync_all` calls on segment files.
    pub fn syncs(&self) -> u64 {
        self.faults.syncs.load(Ordering::SeqCst)
    }

    /// `sync_dir` calls.
    pub fn dir_syncs(&self) -> u64 {
        self.faults.dir_syncs.load(Ordering::SeqCst)
    }

    fn wrap(&self, inner: Box<dyn SegmentFile>) -> Box<dyn SegmentFile> {
        Box::new(FaultyFile {
            inner,
            faults: Arc::clone(&self.faults),
        })
    }
}

impl Storage for FaultyStorage {
    fn create_segment(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        Ok(self.wrap(RealStorage.create_segment(path)?))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        Ok(self.wrap(RealStorage.open_append(path)?))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.faults.dir_syncs.fetch_add(1, Ordering::SeqCst);
        let fault = self.faults.plan().dir_sync_error;
        match fault {
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => RealStorage.sync_dir(dir),
        }
    }
}

#[derive(Debug)]
struct FaultyFile {
    inner: Box<dyn SegmentFile>,
    faults: Arc<Faults>,
}

impl FaultyFile {
    fn sync(&mut self, sync: fn(&mut dyn SegmentFile) -> io::Result<()>) -> io::Result<()> {
        self.faults.syncs.fetch_add(1, Ordering::SeqCst);
        let fault = self.faults.plan().sync_error;
        match fault {
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => sync(&mut *self.inner),
        }
    }
}

impl SegmentFile for FaultyFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.faults.writes.fetch_add(1, Ordering::SeqCst);
        let mut plan = self.faults.plan();
        let mut len = buf.len().min(plan.short_writes.unwrap_or(usize::MAX));
        if let Some((budget, errno)) = &mut plan.write_error {
            if *budget == 0 {
                return Err(io::Error::from_raw_os_error(*errno));
            }
            len = len.min(usize::try_from(*budget).unwrap_or(usize::MAX));
        }
        let written = self.inner.write(&buf[..len])?;
        if let Some((budget, _)) = &mut plan.write_error {
            *budget = budget.saturating_sub(written as u64);
        }
        Ok(written)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.sync(|f| f.sync_data())
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.sync(|f| f.sync_all())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
}

/// `Write::write_all` over a [`SegmentFile`]: a short write is retried, not an error.
fn write_all(file: &mut dyn SegmentFile, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match file.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("corrupt event log segment {path} at byte offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("record of {len} bytes exceeds max_record_bytes ({max})")]
    RecordTooLarge { len: usize, max: u32 },
    /// A write failed; the batch since the last successful sync was discarded and the log
    /// is still usable (see [`LogError::is_retryable`]).
    #[error("{path}: write failed, batch discarded: {source}")]
    WriteFailed { path: PathBuf, source: io::Error },
    #[error("event log stopped after an earlier write or sync failure")]
    Stopped,
}

impl LogError {
    /// True if nothing of the failed batch is durable and the log still accepts appends,
    /// so the caller reports the batch as failed and may carry on (e.g. once disk space
    /// returns). False for errors that stopped the log, and for `RecordTooLarge`, which
    /// leaves the log usable but cannot succeed on retry.
    pub fn is_retryable(&self) -> bool {
        matches!(self, LogError::WriteFailed { .. })
    }
}

/// Failure of [`EventLog::open`]: the log itself, or the caller's replay visitor.
#[derive(Debug, thiserror::Error)]
pub enum OpenError<E> {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("replaying event log: {0}")]
    Visit(E),
}

/// What [`EventLog::open`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// Valid records replayed.
    pub records: u64,
    /// Seq the next append gets.
    pub next_seq: u64,
    /// Bytes dropped from a torn tail (or a torn last-segment header).
    pub truncated_bytes: u64,
    /// Segment files in the log after open.
    pub segments: usize,
}

/// The open log; owns the current (last) segment for appending.
pub struct EventLog {
    cfg: LogConfig,
    file: Box<dyn SegmentFile>,
    path: PathBuf,
    /// First seq of the current segment.
    seg_id: u64,
    seed: u32,
    /// Bytes of the current segment written and fsynced: the length a failed write rolls
    /// back to.
    seg_len: u64,
    /// Records in the current segment, buffered ones included.
    seg_records: u64,
    /// Records not yet written. All but the last are framed; see [`EventLog::frame_last`].
    buf: Vec<u8>,
    /// Offset in `buf` and payload length of the last record, whose frame is written only
    /// once it is known whether the record ends its commit group.
    last: Option<(usize, u32)>,
    next_seq: u64,
    /// First seq not yet durable: where `next_seq` returns after a failed write.
    durable_seq: u64,
    stopped: bool,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("segment", &self.path)
            .field("next_seq", &self.next_seq)
            .field("buffered_bytes", &self.buf.len())
            .field("stopped", &self.stopped)
            .finish()
    }
}

impl EventLog {
    /// Opens (creating the dir if absent), validates every segment, truncates a torn tail,
    /// and calls `visit(seq, payload)` for every valid record in order (this is how the
    /// caller replays state at startup). A visit error aborts open. If open fails, the visitor
    /// may already have seen a prefix of the log; the caller must discard that state.
    pub fn open<E>(
        cfg: LogConfig,
        mut visit: impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<(EventLog, Recovery), OpenError<E>> {
        create_dir(&*cfg.storage, &cfg.dir)?;
        let segments = list_segments(&cfg.dir)?;
        let Some(&(last_id, _)) = segments.last() else {
            let (file, path) = create_segment(&*cfg.storage, &cfg.dir, 1)?;
            let log = EventLog::new(cfg, file, path, 1, HEADER_LEN, 0);
            let recovery = Recovery {
                records: 0,
                next_seq: 1,
                truncated_bytes: 0,
                segments: 1,
            };
            return Ok((log, recovery));
        };
        let (scan, next_seq, records) =
            scan_all(&segments, true, cfg.max_record_bytes, &mut visit)?;
        let path = segment_path(&cfg.dir, last_id);
        let file = cfg.storage.open_append(&path).map_err(io_err(&path))?;
        let mut log = EventLog::new(cfg, file, path, last_id, scan.valid_len, scan.records);
        let mut segments = segments.len();
        if scan.version != VERSION {
            // A version 1 segment with records, from an older build: append to a new one.
            log.guarded(Self::roll)?;
            segments += 1;
        }
        let recovery = Recovery {
            records,
            next_seq,
            truncated_bytes: scan.truncated,
            segments,
        };
        tracing::debug!(?recovery, dir = %log.cfg.dir.display(), "event log opened");
        Ok((log, recovery))
    }

    /// Reads every valid record in order without changing anything on disk, so it is safe
    /// beside a running writer (`export-alerts`): an incomplete tail is skipped, not
    /// truncated; corruption before the tail is still an error. Returns the record count.
    pub fn read<E>(
        cfg: &LogConfig,
        mut visit: impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<u64, OpenError<E>> {
        let segments = list_segments(&cfg.dir)?;
        let (_, _, records) = scan_all(&segments, false, cfg.max_record_bytes, &mut visit)?;
        Ok(records)
    }

    fn new(
        cfg: LogConfig,
        file: Box<dyn SegmentFile>,
        path: PathBuf,
        id: u64,
        len: u64,
        records: u64,
    ) -> Self {
        EventLog {
            cfg,
            file,
            path,
            seg_id: id,
            seed: seed(id),
            seg_len: len,
            seg_records: records,
            buf: Vec::new(),
            last: None,
            next_seq: id + records,
            durable_seq: id + records,
            stopped: false,
        }
    }

    /// Buffers one record of the open commit group; returns its seq. Not durable until
    /// `sync`. The first record of a group may roll to a new segment; creating it is
    /// fail-stop.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, LogError> {
        if self.stopped {
            return Err(LogError::Stopped);
        }
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|len| *len <= self.cfg.max_record_bytes && *len < MORE)
            .ok_or(LogError::RecordTooLarge {
                len: payload.len(),
                max: self.cfg.max_record_bytes.min(MORE - 1),
            })?;
        let size = self.seg_len + FRAME_LEN + u64::from(len);
        if self.buf.is_empty() && self.seg_records > 0 && size > self.cfg.segment_bytes {
            self.guarded(Self::roll)?;
        }
        self.frame_last(MORE);
        self.last = Some((self.buf.len(), len));
        self.buf.extend_from_slice(&[0; FRAME_LEN as usize]);
        self.buf.extend_from_slice(payload);
        self.seg_records += 1;
        self.next_seq += 1;
        Ok(self.next_seq - 1)
    }

    /// Commits the group appended since the last sync: writes it and fdatasyncs (one sync
    /// for many appends). A failed fsync stops the log permanently (never retry and then
    /// acknowledge); later calls return `LogError::Stopped`. A failed write returns the
    /// retryable `LogError::WriteFailed`: the group is discarded, its seqs are reused, and
    /// the log goes on (see the module docs).
    pub fn sync(&mut self) -> Result<(), LogError> {
        self.guarded(Self::flush)
    }

    /// Frames the last buffered record, `more` saying whether its group goes on.
    fn frame_last(&mut self, more: u32) {
        let Some((at, len)) = self.last.take() else {
            return;
        };
        let word = (len | more).to_le_bytes();
        let body = at + FRAME_LEN as usize;
        let crc = crc32c::crc32c_append(crc32c::crc32c_append(self.seed, &word), &self.buf[body..]);
        self.buf[at..at + 4].copy_from_slice(&word);
        self.buf[at + 4..body].copy_from_slice(&crc.to_le_bytes());
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Runs a write step; any error but a rolled-back write stops the log for good.
    fn guarded(&mut self, step: fn(&mut Self) -> Result<(), LogError>) -> Result<(), LogError> {
        if self.stopped {
            return Err(LogError::Stopped);
        }
        let result = step(self);
        match &result {
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "event log write failed; batch discarded");
            }
            Err(e) => {
                self.stopped = true;
                tracing::error!(error = %e, "event log write failed; log stopped");
            }
            Ok(()) => {}
        }
        result
    }

    fn flush(&mut self) -> Result<(), LogError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.frame_last(0);
        if let Err(source) = write_all(&mut *self.file, &self.buf) {
            return Err(self.discard_batch(source));
        }
        self.file.sync_data().map_err(io_err(&self.path))?;
        self.seg_len += self.buf.len() as u64;
        self.buf.clear();
        self.durable_seq = self.next_seq;
        Ok(())
    }

    /// After a failed write: truncates the segment to its durable length and fsyncs that,
    /// so no crash can resurrect part of a batch the caller was told failed, and gives the
    /// batch's seqs back. Returns `WriteFailed`, or `Io` (which stops the log) if the
    /// rollback failed, because then the file's tail is unknown.
    fn discard_batch(&mut self, source: io::Error) -> LogError {
        self.buf.clear();
        self.last = None;
        self.next_seq = self.durable_seq;
        self.seg_records = self.durable_seq - self.seg_id;
        let path = self.path.clone();
        match self
            .file
            .set_len(self.seg_len)
            .and_then(|()| self.file.sync_data())
        {
            Ok(()) => LogError::WriteFailed { path, source },
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "rolling back a failed write failed");
                LogError::Io { path, source }
            }
        }
    }
    /// Starts a new segment. Called between groups only, when every record of the current
    /// segment is durable, so only the last segment can ever hold a torn write.
    fn roll(&mut self) -> Result<(), LogError> {
        let (file, path) = create_segment(&*self.cfg.storage, &self.cfg.dir, self.next_seq)?;
        tracing::debug!(path = %path.display(), "event log rolled to new segment");
        *self = EventLog::new(self.cfg.clone(), file, path, self.next_seq, HEADER_LEN, 0);
        Ok(())
    }

    /// Test hook: swap the segment file handle, to inject real write errors (e.g. /dev/full).
    #[cfg(test)]
    fn replace_file(&mut self, file: File) {
        self.file = Box::new(file);
    }
}

/// Scans every segment in order, checking they continue each other; `repair` truncates a
/// torn tail of the last one. Returns the last segment's scan, the next sequence and the
/// number of records.
fn scan_all<E>(
    segments: &[(u64, PathBuf)],
    repair: bool,
    max: u32,
    visit: &mut impl FnMut(u64, &[u8]) -> Result<(), E>,
) -> Result<(Scan, u64, u64), OpenError<E>> {
    let mut next_seq = segments.first().map_or(1, |s| s.0);
    let (mut records, mut scan) = (0, Scan::default());
    for (i, (id, path)) in segments.iter().enumerate() {
        if *id != next_seq {
            return Err(corrupt(
                path,
                0,
                format!("segment starts at seq {id}, expected {next_seq}"),
            )
            .into());
        }
        let last = i + 1 == segments.len();
        scan = scan_segment(path, *id, last, repair, max, visit)?;
        next_seq += scan.records;
        records += scan.records;
    }
    Ok((scan, next_seq, records))
}

/// Result of scanning one segment.
#[derive(Default)]
struct Scan {
    /// Records of complete commit groups.
    records: u64,
    /// End of the last complete group (the file's length after any truncation).
    valid_len: u64,
    truncated: u64,
    version: u32,
}

/// Validates one segment and visits the records of its complete commit groups. In the last
/// segment a torn tail is truncated back to the end of the last complete group; everywhere
/// else any damage, or a segment ending inside a group, is `Corrupt`.
fn scan_segment<E>(
    path: &Path,
    id: u64,
    last: bool,
    repair: bool,
    max: u32,
    visit: &mut impl FnMut(u64, &[u8]) -> Result<(), E>,
) -> Result<Scan, OpenError<E>> {
    let file = OpenOptions::new()
        .read(true)
        .write(last && repair)
        .open(path)
        .map_err(io_err(path))?;
    let file_len = file.metadata().map_err(io_err(path))?.len();
    let mut r = BufReader::with_capacity(1 << 20, &file);
    let read = |r: &mut BufReader<&File>, buf: &mut [u8]| r.read_exact(buf).map_err(io_err(path));

    let mut header = [0u8; HEADER_LEN as usize];
    if file_len >= HEADER_LEN {
        read(&mut r, &mut header)?;
    }
    // A crash while creating the segment can leave a short or (before the data reached the
    // disk) zero-filled header. Such a segment holds no records, so finish creating it.
    if file_len < HEADER_LEN || (file_len == HEADER_LEN && header == [0; HEADER_LEN as usize]) {
        if !last {
            return Err(corrupt(path, 0, "torn segment header".into()).into());
        }
        if !repair {
            return Ok(Scan {
                valid_len: file_len,
                version: VERSION,
                ..Scan::default()
            });
        }
        tracing::warn!(
            path = %path.display(),
            bytes_dropped = file_len,
            "rewriting torn segment header"
        );
        let mut file = &file;
        file.set_len(0).map_err(io_err(path))?;
        file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
        file.write_all(&header_bytes(id)).map_err(io_err(path))?;
        sync_created(file, path)?;
        return Ok(Scan {
            records: 0,
            valid_len: HEADER_LEN,
            truncated: file_len,
            version: VERSION,
        });
    }
    let version = le_u32(&header[8..12]);
    let header_id = u64::from_le_bytes(header[12..].try_into().unwrap_or_default());
    let bad_header = if &header[..8] != MAGIC {
        Some("bad magic (not an incidentd event log segment)".to_string())
    } else if version != 1 && version != VERSION {
        Some(format!("unsupported format version {version}"))
    } else if header_id != id {
        Some(format!("segment id {header_id} does not match file name"))
    } else {
        None
    };
    if let Some(reason) = bad_header {
        return Err(corrupt(path, 0, reason).into());
    }

    let seed = seed(id);
    let mut scan = Scan {
        valid_len: HEADER_LEN,
        version,
        ..Scan::default()
    };
    // In the last segment, the open group's payloads back to back in `group[..used]` and
    // where each ends: visited once the group's last record is read, so an incomplete group
    // is never replayed. A sealed segment's records are visited at once: groups never span
    // segments, so one cut short there fails the open anyway. The buffer is reused, so it is
    // zero-filled only when it grows.
    let (mut group, mut ends, mut used) = (Vec::new(), Vec::new(), 0);
    // Records of the open group, and where the next record starts.
    let (mut pending, mut off) = (0, HEADER_LEN);
    // Where the damage starts and what it is.
    let torn = loop {
        if off == file_len {
            if pending == 0 {
                break None;
            }
            let reason = format!("segment ends inside a commit group of {pending} records");
            break Some((scan.valid_len, reason));
        }
        if file_len - off < FRAME_LEN {
            break Some((off, "incomplete record header".to_string()));
        }
        let mut frame = [0u8; FRAME_LEN as usize];
        read(&mut r, &mut frame)?;
        let (word, crc) = (le_u32(&frame[..4]), le_u32(&frame[4..]));
        let (len, more) = match version {
            1 => (word, false),
            _ => (word & !MORE, word & MORE != 0),
        };
        if len > max {
            break Some((
                off,
                format!("record length {len} exceeds max_record_bytes ({max})"),
            ));
        }
        let end = off + FRAME_LEN + u64::from(len);
        if end > file_len {
            break Some((
                off,
                format!("record of {len} bytes extends past end of file"),
            ));
        }
        let at = if last { used } else { 0 };
        let to = at + len as usize;
        if group.len() < to {
            group.resize(to, 0);
        }
        read(&mut r, &mut group[at..to])?;
        if crc32c::crc32c_append(crc32c::crc32c_append(seed, &frame[..4]), &group[at..to]) != crc {
            // A torn final write ends at EOF. A zero-filled tail (an extent the filesystem
            // allocated but never wrote) cannot hold a valid record either: its first record
            // is all zeros and failed, so every later all-zero record fails identically.
            let zero_tail = frame == [0; 8] && rest_is_zero(&mut r).map_err(io_err(path))?;
            if last && (end == file_len || zero_tail) {
                break Some((off, "checksum mismatch in final record".to_string()));
            }
            return Err(corrupt(path, off, "checksum mismatch".into()).into());
        }
        off = end;
        pending += 1;
        if !last {
            visit(id + scan.records, &group[..to]).map_err(OpenError::Visit)?;
            scan.records += 1;
        } else {
            ends.push(to);
            used = to;
        }
        if more {
            continue;
        }
        if last {
            let mut from = 0;
            for (seq, &to) in (id + scan.records..).zip(&ends) {
                visit(seq, &group[from..to]).map_err(OpenError::Visit)?;
                from = to;
            }
            scan.records += ends.len() as u64;
            used = 0;
            ends.clear();
        }
        pending = 0;
        scan.valid_len = end;
    };
    if let Some((off, reason)) = torn {
        if !last {
            return Err(corrupt(path, off, reason).into());
        }
        scan.truncated = file_len - scan.valid_len;
        if !repair {
            // A reader beside a live writer sees the tail being written: stop before it.
            return Ok(scan);
        }
        tracing::warn!(
            path = %path.display(),
            offset = scan.valid_len,
            damage_at = off,
            bytes_dropped = scan.truncated,
            %reason,
            "truncating torn tail of event log to its last complete commit group"
        );
        file.set_len(scan.valid_len).map_err(io_err(path))?;
        file.sync_all().map_err(io_err(path))?;
    }
    if last && repair && version == 1 && scan.records == 0 {
        // This build's records must not go into a version 1 segment, where an older build
        // would misread their group marks; an empty one simply becomes version 2.
        let mut file = &file;
        file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
        file.write_all(&header_bytes(id)).map_err(io_err(path))?;
        file.sync_all().map_err(io_err(path))?;
        scan.version = VERSION;
    }
    Ok(scan)
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn rest_is_zero(r: &mut impl Read) -> io::Result<bool> {
    let mut chunk = [0u8; 8192];
    loop {
        match r.read(&mut chunk)? {
            0 => return Ok(true),
            n if chunk[..n].iter().any(|b| *b != 0) => return Ok(false),
            _ => {}
        }
    }
}

/// Deletes whole segments whose records all have sequences at or below `seq` (a snapshot
/// covers them), oldest first; the newest segment always stays. Returns how many went.
pub fn remove_segments_through(dir: &Path, seq: u64) -> Result<usize, LogError> {
    let segments = list_segments(dir)?;
    let mut removed = 0;
    for pair in segments.windows(2) {
        let ((_, path), (next_first, _)) = (&pair[0], &pair[1]);
        if next_first.saturating_sub(1) > seq {
            break;
        }
        fs::remove_file(path).map_err(io_err(path))?;
        removed += 1;
    }
    if removed > 0 {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
    }
    Ok(removed)
}

/// Segment files sorted by first seq; other files are ignored.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let id = name
            .to_str()
            .and_then(|n| n.strip_suffix(".seg"))
            .filter(|n| n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(id) = id.filter(|id| *id > 0) {
            segments.push((id, entry.path()));
        }
    }
    segments.sort();
    Ok(segments)
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

fn header_bytes(id: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..].copy_from_slice(&id.to_le_bytes());
    h
}

fn seed(id: u64) -> u32 {
    crc32c::crc32c(&id.to_le_bytes())
}

/// Creates a segment: header, fsync of the file, then of the directory, so a segment that
/// is visible after a crash has a durable header. Every error is `Io` (fail-stop at a roll):
/// a half-created file would block a retry's `create_new`, and the next open repairs it.
fn create_segment(
    storage: &dyn Storage,
    dir: &Path,
    id: u64,
) -> Result<(Box<dyn SegmentFile>, PathBuf), LogError> {
    let path = segment_path(dir, id);
    let mut file = storage.create_segment(&path).map_err(io_err(&path))?;
    write_all(&mut *file, &header_bytes(id)).map_err(io_err(&path))?;
    file.sync_all().map_err(io_err(&path))?;
    let dir = parent(&path);
    storage.sync_dir(dir).map_err(io_err(dir))?;
    Ok((file, path))
}

/// Syncs a segment file rewritten at open, then its directory entry.
fn sync_created(file: &File, path: &Path) -> Result<(), LogError> {
    file.sync_all().map_err(io_err(path))?;
    let dir = parent(path);
    fsync_dir(dir).map_err(io_err(dir))
}

/// A path's directory; `.` for a bare file name, which `Path::parent` gives as "".
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates the log directory if absent, making its entry in the parent durable too.
fn create_dir(storage: &dyn Storage, dir: &Path) -> Result<(), LogError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let parent = parent(dir);
    storage.sync_dir(parent).map_err(io_err(parent))
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, offset: u64, reason: String) -> LogError {
    LogError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason,
    }
}

#[cfg(test)]
mod read_tests {
    use super::*;

    #[test]
    fn read_is_read_only_and_skips_a_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = LogConfig::new(dir.path());
        let (mut log, _) = EventLog::open(cfg.clone(), |_, _| Ok::<(), ()>(())).expect("open");
        for i in 0..5u8 {
            log.append(&[i; 10]).expect("append");
        }
        log.sync().expect("sync");
        let seg = segment_path(dir.path(), 1);
        let mut f = OpenOptions::new().append(true).open(&seg).expect("segment");
        f.write_all(&[7, 0, 0]).expect("torn bytes");
        let len = fs::metadata(&seg).expect("meta").len();
        let mut seen = Vec::new();
        let n = EventLog::read(&cfg, |seq, p| {
            seen.push((seq, p[0]));
            Ok::<(), ()>(())
        })
        .expect("read");
        assert_eq!(n, 5);
        assert_eq!(
            seen,
            (0..5u8).map(|i| (u64::from(i) + 1, i)).collect::<Vec<_>>()
        );
        assert_eq!(
            fs::metadata(&seg).expect("meta").len(),
            len,
            "nothing truncated"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::time::{Duration, Instant};

    type Records = Vec<(u64, Vec<u8>)>;

    fn cfg(dir: &Path) -> LogConfig {
        LogConfig::new(dir)
    }

    fn small(dir: &Path, segment_bytes: u64) -> LogConfig {
        LogConfig {
            segment_bytes,
            ..LogConfig::new(dir)
        }
    }

    /// Opens and collects every replayed record.
    fn open(cfg: LogConfig) -> Result<(EventLog, Recovery, Records), LogError> {
        let mut seen = Vec::new();
        let visit = |seq, p: &[u8]| {
            seen.push((seq, p.to_vec()));
            Ok::<(), Infallible>(())
        };
        match EventLog::open(cfg, visit) {
            Ok((log, rec)) => Ok((log, rec, seen)),
            Err(OpenError::Log(e)) => Err(e),
            Err(OpenError::Visit(never)) => match never {},
        }
    }

    /// A config writing through a fresh `FaultyStorage`, and that storage.
    fn faulty(dir: &Path, segment_bytes: u64) -> (LogConfig, Arc<FaultyStorage>) {
        let faults = FaultyStorage::new();
        let cfg = LogConfig {
            storage: faults.clone(),
            ..small(dir, segment_bytes)
        };
        (cfg, faults)
    }

    fn assert_seqs_contiguous(records: &Records) {
        for (i, (seq, _)) in records.iter().enumerate() {
            assert_eq!(*seq, i as u64 + 1, "seqs not contiguous");
        }
    }

    fn open_err(cfg: LogConfig) -> LogError {
        match open(cfg) {
            Ok((_, rec, _)) => panic!("open succeeded: {rec:?}"),
            Err(e) => e,
        }
    }

    /// Deterministic payloads of varying size (0 included).
    fn payload(i: u64) -> Vec<u8> {
        let mut p = format!("{{\"fact\":{i}}}").into_bytes();
        p.resize((i as usize * 7) % 61, b'x');
        p
    }

    /// Appends `range` payloads, syncing every `batch` appends and at the end.
    fn write(log: &mut EventLog, range: std::ops::Range<u64>, batch: u64) -> Records {
        let mut out = Vec::new();
        for i in range {
            let seq = log.append(&payload(i)).unwrap();
            out.push((seq, payload(i)));
            if i % batch == 0 {
                log.sync().unwrap();
            }
        }
        log.sync().unwrap();
        out
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        list_segments(dir)
            .unwrap()
            .into_iter()
            .map(|(_, p)| p)
            .collect()
    }

    /// (offset, payload length, more of its group follows) of each record of a version 2
    /// segment, walking frames the way the format defines them.
    fn frames(path: &Path) -> Vec<(u64, u32, bool)> {
        let bytes = fs::read(path).unwrap();
        let mut off = HEADER_LEN as usize;
        let mut out = Vec::new();
        while off + 8 <= bytes.len() {
            let word = le_u32(&bytes[off..]);
            out.push((off as u64, word & !MORE, word & MORE != 0));
            off += 8 + (word & !MORE) as usize;
        }
        out
    }

    fn patch(path: &Path, offset: u64, bytes: &[u8]) {
        let mut f = OpenOptions::new().write(true).open(path).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.write_all(bytes).unwrap();
    }

    fn flip_bit(path: &Path, offset: u64) {
        let mut bytes = fs::read(path).unwrap();
        bytes[offset as usize] ^= 0x10;
        fs::write(path, bytes).unwrap();
    }

    fn append_bytes(path: &Path, bytes: &[u8]) {
        OpenOptions::new()
            .append(true)
            .open(path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
    }

    fn copy_dir(from: &Path, to: &Path) {
        fs::create_dir_all(to).unwrap();
        for e in fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }

    fn assert_corrupt(err: LogError, want_path: &Path, want_offset: u64, reason_has: &str) {
        let LogError::Corrupt {
            path,
            offset,
            reason,
        } = &err
        else {
            panic!("expected Corrupt, got {err:?}");
        };
        assert_eq!((path.as_path(), *offset), (want_path, want_offset), "{err}");
        assert!(
            reason.contains(reason_has),
            "reason {reason:?} lacks {reason_has:?}"
        );
        let msg = err.to_string();
        let name = want_path.file_name().unwrap().to_str().unwrap();
        assert!(
            msg.contains(name) && msg.contains(&want_offset.to_string()),
            "{msg}"
        );
    }

    #[test]
    fn new_log_creates_first_segment_and_ignores_other_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("log");
        let (log, rec, seen) = open(cfg(&dir)).unwrap();
        let want = Recovery {
            records: 0,
            next_seq: 1,
            truncated_bytes: 0,
            segments: 1,
        };
        assert_eq!((rec, seen.len(), log.next_seq()), (want, 0, 1));
        let first = dir.join("00000000000000000001.seg");
        assert_eq!(fs::read(&first).unwrap(), header_bytes(1));
        drop(log);
        fs::write(dir.join("README"), "x").unwrap();
        fs::write(dir.join("7.seg"), "not a segment").unwrap();
        let (_, rec, _) = open(cfg(&dir)).unwrap();
        assert_eq!(rec.segments, 1);
    }

    #[test]
    fn round_trip_across_syncs() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut log, _, _) = open(cfg(tmp.path())).unwrap();
        let written = write(&mut log, 1..301, 17);
        assert_eq!(written.first().map(|r| r.0), Some(1));
        drop(log);
        let (mut log, rec, seen) = open(cfg(tmp.path())).unwrap();
        assert_eq!(seen, written);
        assert_eq!(
            (rec.records, rec.next_seq, rec.truncated_bytes),
            (300, 301, 0)
        );
        assert_eq!(log.append(b"next").unwrap(), 301);
    }

    #[test]
    fn rolls_segments_named_by_first_seq() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut log, _, _) = open(small(tmp.path(), 200)).unwrap();
        let mut written = write(&mut log, 1..101, 9);
        // A record larger than a whole segment still fits: it gets a segment of its own.
        written.push((101, vec![7; 300]));
        assert_eq!(log.append(&[7; 300]).unwrap(), 101);
        log.sync().unwrap();
        drop(log);
        let (_, rec, seen) = open(small(tmp.path(), 200)).unwrap();
        assert_eq!(seen, written);
        let segs = segments(tmp.path());
        assert!(segs.len() > 10, "{} segments", segs.len());
        assert_eq!(rec.segments, segs.len());
        let mut seq = 1;
        for path in &segs {
            let name = format!("{seq:020}.seg");
            assert_eq!(path.file_name().unwrap().to_str(), Some(name.as_str()));
            let len = fs::metadata(path).unwrap().len();
            let frames = frames(path);
            let groups = frames.iter().filter(|f| !f.2).count();
            assert!(!frames.last().unwrap().2, "{name} ends inside a group");
            // A segment outgrows its size only to keep a group whole.
            assert!(
                len <= 200 || groups == 1,
                "{name}: {len} bytes, {groups} groups"
            );
            seq += frames.len() as u64;
        }
        assert_eq!(seq, 102);
    }

    #[test]
    fn torn_tail_at_every_offset() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let (mut log, _, _) = open(cfg(&src)).unwrap();
        let mut written = write(&mut log, 1..5, 2);
        let seg = segments(&src).remove(0);
        let good_len = fs::metadata(&seg).unwrap().len();
        for p in [&[0x5A; 40][..], &[], &[0x5C; 17]] {
            log.append(p).unwrap();
        }
        log.sync().unwrap();
        drop(log);
        let full_len = fs::metadata(&seg).unwrap().len();
        // Every cut into the last group, its record boundaries included, drops all of it.
        for cut in good_len..full_len {
            let dir = tmp.path().join(format!("cut{cut}"));
            copy_dir(&src, &dir);
            let seg = segments(&dir).remove(0);
            OpenOptions::new()
                .write(true)
                .open(&seg)
                .unwrap()
                .set_len(cut)
                .unwrap();
            let read = EventLog::read(&cfg(&dir), |_, _| Ok::<(), ()>(())).unwrap();
            assert_eq!(read, 4, "a reader stops before the group, cut at {cut}");
            let (mut log, rec, seen) = open(cfg(&dir)).unwrap();
            assert_eq!(seen, written, "cut at {cut}");
            assert_eq!((rec.truncated_bytes, rec.next_seq), (cut - good_len, 5));
            assert_eq!(fs::metadata(&seg).unwrap().len(), good_len);
            assert_eq!(log.append(b"after").unwrap(), 5);
            log.sync().unwrap();
            drop(log);
            let (_, rec, seen) = open(cfg(&dir)).unwrap();
            written.push((5, b"after".to_vec()));
            assert_eq!((seen, rec.truncated_bytes), (written.clone(), 0));
            written.pop();
        }
    }

    #[test]
    fn trailing_garbage_is_truncated() {
        let mut small_len = 5u32.to_le_bytes().to_vec();
        small_len.extend_from_slice(&[1, 2, 3, 4, 9, 9]); // crc + 2 of 5 payload bytes
        let zeros = [0u8; 4096]; // zero-filled extent after a crash
        for garbage in [&[0xAB; 37][..], &small_len, &zeros] {
            let tmp = tempfile::tempdir().unwrap();
            let (mut log, _, _) = open(cfg(tmp.path())).unwrap();
            let written = write(&mut log, 1..11, 3);
            drop(log);
            append_bytes(&segments(tmp.path())[0], garbage);
            let (mut log, rec, seen) = open(cfg(tmp.path())).unwrap();
            assert_eq!((seen, rec.truncated_bytes), (written, garbage.len() as u64));
            assert_eq!(log.append(b"x").unwrap(), 11);
        }
    }

    #[test]
    fn bit_flip_in_sealed_segment_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut log, _, _) = open(small(tmp.path(), 200)).unwrap();
        write(&mut log, 1..40, 5);
        drop(log);
        let seg = segments(tmp.path()).remove(1);
        let (offset, _, _) = frames(&seg)[1];
        flip_bit(&seg, offset + 4); // in the stored CRC, so whatever the payload length
        assert_corrupt(open_err(small(tmp.path(), 200)), &seg, offset, "checksum");
    }

    #[test]
    fn huge_length_in_sealed_segment_is_corrupt_without_allocating() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut log, _, _) = open(small(tmp.path(), 200)).unwrap();
        write(&mut log, 1..40, 5);
        drop(log);
        let seg = segments(tmp.path()).remove(0);
        let (offset, _, _) = frames(&seg)[1];
        patch(&seg, offset, &0xFFFF_FFF0u32.to_le_bytes());
        let start = Instant::now();
        let err = open_err(small(tmp.path(), 200));
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_corrupt(err, &seg, offset, "exceeds max_record_bytes");
    }

    #[test]
    fn huge_length_in_final_record_is_torn_tail() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut log, _, _) = open(small(tmp.path(), 200)).unwrap();
        let mut written = write(&mut log, 1..40, 5);
        drop(log);
        let seg = segments(tmp.path()).pop().unwrap();
        let frames = frames(&seg);
        let len = fs::metadata(&seg).unwrap().len();
        patch(
            &seg,
            frames.last().unwrap().0,
            &0xFFFF_FFF0u32.to_le_bytes(),
        );
        let (_, rec, seen) = open(small(tmp.path(), 200)).unwrap();
        // The whole last group goes: records 36..=39.
        let group_start = frames[frames.len() - 4].0;
        written.truncate(35);
        assert_eq!((seen, rec.truncated_bytes), (written, len - group_start));
        assert_eq!(fs::metadata(&seg).unwrap().len(), group_start);
    }

    #[test]
    fn checksum_failure_in_last_segment() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("log");
        let (mut log, _, _) = open(cfg(&dir)).unwrap();
        let mut written = write(&mut log, 1..6, 1);
        drop(log);
        let seg = segments(&dir).remove(0);
        let frames = frames(&seg);

        // Followed by a valid record: that one may have been acknowledged, so fail loudly.
        let copy = tmp.path().join("copy");
        copy_dir(&dir, &copy);
        let mid = segments(&copy).remove(0);
        flip_bit(&mid, frames[2].0 + 8);
        assert_corrupt(open_err(cfg(&copy)), &mid, frames[2].0, "checksum");

        // The final record ending exactly at EOF: a torn write, truncated.
        let (offset, len, _) = frames[4];
        flip_bit(&seg, offset + 8);
        let (_, rec, seen) = open(cfg(&dir)).unwrap();
        written.pop();
        assert_eq!((seen, rec.truncated_bytes), (written, 8 + u64::from(len)));
    }

    #[test]
    fn bad_headers_are_corrupt() {
        let cases: [(&[u8], u64, &str); 3] = [
            (b"NOTALOG\0", 0, "bad magic"),
            (&3u32.to_le_bytes(), 8, "unsupported format version 3"),
            (&99u64.to_le_bytes(), 12, "segment id 99 does not match"),
        ];
        for (bytes, at, reason) in cases {
            let tmp = tempfile::tempdir().unwrap();
            let (mut log, _, _) = open(cfg(tmp.path())).unwrap();
            write(&mut log, 1..3, 10);
            drop(log);
            let seg = segments(tmp.path()).remove(0);
            patch(&seg, at, bytes);
            assert_corrupt(open_err(cfg(tmp.path())), &seg, 0, reason);
        }
    }

    #[test]
    fn record_copied_from_another_segment_fails_checksum() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut log, _, _) = open(small(tmp.path(), 100)).unwrap();
        for i in 0..9u8 {
            log.append(&[i; 30]).unwrap(); // 38 framed bytes: two records per segment
            log.sync().unwrap();
        }
        drop(log);
        let segs = list_segments(tmp.path()).unwrap();
        let ((a_id, a), (b_id, b)) = (&segs[0], &segs[1]);
        let a_bytes = fs::read(a).unwrap();
        let record = &a_bytes[20..58];
        patch(b, 20, record);
        // The copied frame itself is intact: only the segment-id seed tells it apart.
        let crc =
            |id| crc32c::crc32c_append(crc32c::crc32c_append(seed(id), &record[..4]), &record[8..]);
        assert_eq!(crc(*a_id), le_u32(&record[4..]));
        assert_ne!(crc(*b_id), le_u32(&record[4..]));
        assert_corrupt(open_err(small(tmp.path(), 100)), b, 20, "checksum");
    }

    #[test]
    fn record_too_large_is_not_fail_stop() {
        let tmp = tempfile::tempdir().unwrap();
        let config = LogConfig {
            max_record_bytes: 64,
            ..cfg(tmp.path())
        };
        let (mut log, _, _) = open(config.clone()).unwrap();
        let err = log.append(&[1; 65]).unwrap_err();
        assert!(
            matches!(err, LogError::RecordTooLarge { len: 65, max: 64 }),
            "{err:?}"
        );
        assert!(!log.is_stopped());
        assert_eq!(log.append(&[2; 64]).unwrap(), 1);
        log.sync().unwrap();
        drop(log);
        let (_, _, seen) = open(config).unwrap();
        assert_eq!(seen, vec![(1, vec![2; 64])]);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn failed_write_stops_the_log() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut log, _, _) = open(cfg(tmp.path())).unwrap();
        let written = write(&mut log, 1..4, 10);
        log.append(b"lost").unwrap();
        // A real ENOSPC from the kernel: the segment handle now points at /dev/full. That
        // cannot be truncated either, so the rollback fails too and the log must stop.
        log.replace_file(OpenOptions::new().write(true).open("/dev/full").unwrap());
        let err = log.sync().unwrap_err();
        assert!(
            matches!(&err, LogError::Io { source, .. } if source.raw_os_error() == Some(28)),
            "{err:?}"
        );
        assert!(log.is_stopped());
        assert!(matches!(log.append(b"x"), Err(LogError::Stopped)));
        assert!(matches!(log.sync(), Err(LogError::Stopped)));
        drop(log);
        let (_, _, seen) = open(cfg(tmp.path())).unwrap();
        assert_eq!(seen, written);
    }

    #[test]
    fn failed_roll_stops_the_log() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("log");
        let (mut log, _, _) = open(small(&dir, 60)).unwrap();
        log.append(&[1; 30]).unwrap();
        log.sync().unwrap();
        fs::remove_dir_all(&dir).unwrap(); // creating the next segment now fails
        let err = log.append(&[2; 30]).unwrap_err();
        assert!(matches!(err, LogError::Io { .. }), "{err:?}");
        assert!(log.is_stopped());
        assert!(matches!(log.append(b"x"), Err(LogError::Stopped)));
        assert!(matches!(log.sync(), Err(LogError::Stopped)));
    }

    #[test]
    fn torn_last_segment_header_is_reinitialised() {
        for torn in [&b"INCDL"[..], &[0; 20]] {
            let tmp = tempfile::tempdir().unwrap();
            let (mut log, _, _) = open(cfg(tmp.path())).unwrap();
            let mut written = write(&mut log, 1..4, 10);
            drop(log);
            let next = segment_path(tmp.path(), 4);
            fs::write(&next, torn).unwrap();
            let (mut log, rec, seen) = open(cfg(tmp.path())).unwrap();
            assert_eq!(
                (&seen, rec.truncated_bytes, rec.segments),
                (&written, torn.len() as u64, 2)
            );
            assert_eq!(log.append(b"four").unwrap(), 4);
            log.sync().unwrap();
            drop(log);
            written.push((4, b"four".to_vec()));
            assert_eq!(open(cfg(tmp.path())).unwrap().2, written);
            assert_eq!(frames(&next).len(), 1);
        }
    }

    #[test]
    fn torn_header_or_gap_before_last_segment_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut log, _, _) = open(small(tmp.path(), 100)).unwrap();
        write(&mut log, 1..20, 5);
        drop(log);
        let segs = segments(tmp.path());
        fs::remove_file(&segs[1]).unwrap();
        assert_corrupt(open_err(small(tmp.path(), 100)), &segs[2], 0, "expected");
        fs::write(&segs[1], b"INC").unwrap();
        assert_corrupt(
            open_err(small(tmp.path(), 100)),
            &segs[1],
            0,
            "torn segment header",
        );
    }

    #[test]
    fn visit_error_aborts_open() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut log, _, _) = open(cfg(tmp.path())).unwrap();
        write(&mut log, 1..10, 10);
        drop(log);
        let result = EventLog::open(cfg(tmp.path()), |seq, _| {
            if seq == 5 { Err("bad fact") } else { Ok(()) }
        });
        let Err(err) = result else {
            panic!("open succeeded")
        };
        assert!(matches!(err, OpenError::Visit("bad fact")));
        assert_eq!(err.to_string(), "replaying event log: bad fact");
    }

    #[test]
    fn failed_fsync_stops_the_log() {
        let tmp = tempfile::tempdir().unwrap();
        let (config, faults) = faulty(tmp.path(), 64 << 20);
        let (mut log, _, _) = open(config).unwrap();
        let acked = write(&mut log, 1..21, 4);
        for i in 21..26 {
            log.append(&payload(i)).unwrap();
        }
        faults.fail_syncs(FaultyStorage::EIO);
        let err = log.sync().unwrap_err();
        assert!(
            matches!(&err, LogError::Io { source, .. } if source.raw_os_error() == Some(5)),
            "{err:?}"
        );
        assert!(!err.is_retryable());
        assert!(log.is_stopped());
        // Never retry: even once the device "recovers", nothing is accepted.
        faults.clear();
        assert!(matches!(log.append(b"x"), Err(LogError::Stopped)));
        assert!(matches!(log.sync(), Err(LogError::Stopped)));
        drop(log);
        // The failed batch reached the page cache, so it may replay; it was never acked.
        let (_, _, seen) = open(cfg(tmp.path())).unwrap();
        assert_eq!(seen[..acked.len()], acked[..]);
        assert!(seen.len() <= acked.len() + 5, "{} records", seen.len());
        assert_seqs_contiguous(&seen);
    }

    #[test]
    fn failed_write_discards_the_batch_and_the_log_recovers() {
        // Nothing written, a partial write (a filling disk), and EIO instead of ENOSPC.
        let cases = [
            (0, FaultyStorage::ENOSPC),
            (13, FaultyStorage::ENOSPC),
            (100, FaultyStorage::EIO),
        ];
        for (budget, errno) in cases {
            let tmp = tempfile::tempdir().unwrap();
            let (config, faults) = faulty(tmp.path(), 64 << 20);
            let (mut log, _, _) = open(config).unwrap();
            let mut acked = write(&mut log, 1..11, 3);
            let seg = segments(tmp.path()).remove(0);
            let durable_len = fs::metadata(&seg).unwrap().len();
            let next = log.next_seq();
            for i in 100..110 {
                log.append(&payload(i)).unwrap();
            }
            faults.fail_writes_after(budget, errno);
            let writes = faults.writes();
            let err = log.sync().unwrap_err();
            assert!(
                matches!(&err, LogError::WriteFailed { source, .. }
                    if source.raw_os_error() == Some(errno)),
                "{err:?}"
            );
            assert!(err.is_retryable() && !log.is_stopped());
            assert_eq!(faults.writes() - writes, if budget == 0 { 1 } else { 2 });
            assert_eq!(
                fs::metadata(&seg).unwrap().len(),
                durable_len,
                "rolled back"
            );
            assert_eq!(log.next_seq(), next, "seqs given back");
            // Still full: fails the same way, and an empty sync has nothing to lose.
            assert_eq!(log.append(b"again").unwrap(), next);
            assert!(log.sync().unwrap_err().is_retryable());
            log.sync().unwrap();
            faults.clear();
            for i in 200..205 {
                let seq = log.append(&payload(i)).unwrap();
                acked.push((seq, payload(i)));
            }
            log.sync().unwrap();
            drop(log);
            let (_, rec, seen) = open(cfg(tmp.path())).unwrap();
            assert_eq!(seen, acked, "budget {budget}");
            assert_eq!(rec.truncated_bytes, 0);
            assert_seqs_contiguous(&seen);
        }
    }

    #[test]
    fn a_group_never_spans_segments() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut log, _, _) = open(small(tmp.path(), 100)).unwrap();
        let mut written = Vec::new();
        // 38 framed bytes each: a 100-byte segment holds two, but a group stays whole.
        for (seq, byte) in [(1, 1), (2, 2), (3, 3)] {
            assert_eq!(log.append(&[byte; 30]).unwrap(), seq);
            written.push((seq, vec![byte; 30]));
        }
        log.sync().unwrap();
        assert_eq!(segments(tmp.path()).len(), 1, "no roll inside a group");
        assert_eq!(log.append(&[4; 30]).unwrap(), 4); // the next group rolls first
        written.push((4, vec![4; 30]));
        log.sync().unwrap();
        drop(log);
        let segs = segments(tmp.path());
        let marks = |path| frames(path).iter().map(|f| f.2).collect::<Vec<_>>();
        assert_eq!(marks(&segs[0]), [true, true, false]);
        assert_eq!(marks(&segs[1]), [false]);
        let (_, rec, seen) = open(small(tmp.path(), 100)).unwrap();
        assert_eq!((seen, rec.segments), (written, 2));
    }

    #[test]
    fn sealed_segment_ending_inside_a_group_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut log, _, _) = open(small(tmp.path(), 100)).unwrap();
        for byte in 1..4 {
            log.append(&[byte; 30]).unwrap();
        }
        log.sync().unwrap();
        log.append(b"next segment").unwrap();
        log.sync().unwrap();
        drop(log);
        let seg = segments(tmp.path()).remove(0);
        let frames = frames(&seg);
        fs::write(&seg, &fs::read(&seg).unwrap()[..frames[2].0 as usize]).unwrap();
        let err = open_err(small(tmp.path(), 100));
        assert_corrupt(
            err,
            &seg,
            HEADER_LEN,
            "ends inside a commit group of 2 records",
        );
    }

    /// A version 1 segment as builds before commit groups wrote it: no group marks.
    fn v1_segment(dir: &Path, id: u64, payloads: &[&[u8]]) {
        let mut bytes = header_bytes(id).to_vec();
        bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
        for p in payloads {
            let len = (p.len() as u32).to_le_bytes();
            let crc = crc32c::crc32c_append(crc32c::crc32c_append(seed(id), &len), p);
            bytes.extend_from_slice(&len);
            bytes.extend_from_slice(&crc.to_le_bytes());
            bytes.extend_from_slice(p);
        }
        fs::create_dir_all(dir).unwrap();
        fs::write(segment_path(dir, id), bytes).unwrap();
    }

    #[test]
    fn a_version_1_log_replays_and_is_continued_in_a_version_2_segment() {
        let tmp = tempfile::tempdir().unwrap();
        v1_segment(tmp.path(), 1, &[b"one", b"two"]);
        let (mut log, rec, seen) = open(cfg(tmp.path())).unwrap();
        let mut want = vec![(1, b"one".to_vec()), (2, b"two".to_vec())];
        assert_eq!((&seen, rec.next_seq, rec.segments), (&want, 3, 2));
        for p in [b"three", b"four!"] {
            log.append(p).unwrap();
            want.push((want.len() as u64 + 1, p.to_vec()));
        }
        log.sync().unwrap();
        drop(log);
        let segs = segments(tmp.path());
        assert_eq!(
            fs::read(&segs[0]).unwrap()[8],
            1,
            "the old segment is left as it is"
        );
        assert_eq!(&fs::read(&segs[1]).unwrap()[..20], &header_bytes(3));
        assert_eq!(open(cfg(tmp.path())).unwrap().2, want);

        // An empty version 1 segment becomes version 2 in place.
        let tmp = tempfile::tempdir().unwrap();
        v1_segment(tmp.path(), 7, &[]);
        let (mut log, rec, _) = open(cfg(tmp.path())).unwrap();
        assert_eq!((rec.next_seq, rec.segments), (7, 1));
        assert_eq!(
            fs::read(segment_path(tmp.path(), 7)).unwrap(),
            header_bytes(7)
        );
        log.append(b"seven").unwrap();
        log.sync().unwrap();
        drop(log);
        assert_eq!(open(cfg(tmp.path())).unwrap().2, [(7, b"seven".to_vec())]);
    }

    #[test]
    fn failed_rollback_stops_the_log() {
        let tmp = tempfile::tempdir().unwrap();
        let (config, faults) = faulty(tmp.path(), 64 << 20);
        let (mut log, _, _) = open(config).unwrap();
        let acked = write(&mut log, 1..4, 10);
        log.append(b"lost").unwrap();
        faults.fail_writes_after(5, FaultyStorage::ENOSPC);
        faults.fail_syncs(FaultyStorage::EIO); // the rollback's fsync
        let err = log.sync().unwrap_err();
        assert!(
            matches!(&err, LogError::Io { source, .. } if source.raw_os_error() == Some(28)),
            "{err:?}"
        );
        assert!(log.is_stopped());
        assert!(matches!(log.append(b"x"), Err(LogError::Stopped)));
        drop(log);
        let (_, rec, seen) = open(cfg(tmp.path())).unwrap();
        assert_eq!((seen, rec.truncated_bytes), (acked, 0), "tail truncated");
    }

    #[test]
    fn short_writes_still_land() {
        let tmp = tempfile::tempdir().unwrap();
        let (config, faults) = faulty(tmp.path(), 300);
        let (mut log, _, _) = open(config).unwrap();
        faults.short_writes(3);
        let written = write(&mut log, 1..60, 7); // rolls, so headers are written short too
        let segs = segments(tmp.path());
        assert!(segs.len() > 3, "{} segments", segs.len());
        let bytes: u64 = segs.iter().map(|p| fs::metadata(p).unwrap().len()).sum();
        assert!(faults.writes() >= (bytes - HEADER_LEN).div_ceil(3));
        assert!(!log.is_stopped());
        drop(log);
        let (_, rec, seen) = open(small(tmp.path(), 300)).unwrap();
        assert_eq!((seen, rec.truncated_bytes), (written, 0));
    }

    #[test]
    fn failed_dir_sync_while_rolling_stops_the_log() {
        let tmp = tempfile::tempdir().unwrap();
        let (config, faults) = faulty(tmp.path(), 60);
        let (mut log, _, _) = open(config).unwrap();
        log.append(&[1; 30]).unwrap();
        log.sync().unwrap();
        faults.fail_dir_syncs(FaultyStorage::EIO);
        let dir_syncs = faults.dir_syncs();
        let err = log.append(&[2; 30]).unwrap_err();
        assert!(
            matches!(&err, LogError::Io { source, .. } if source.raw_os_error() == Some(5)),
            "{err:?}"
        );
        assert_eq!(faults.dir_syncs(), dir_syncs + 1);
        assert!(log.is_stopped());
        faults.clear();
        assert!(matches!(log.append(b"x"), Err(LogError::Stopped)));
        assert!(matches!(log.sync(), Err(LogError::Stopped)));
        drop(log);
        let (_, rec, seen) = open(small(tmp.path(), 60)).unwrap();
        assert_eq!((seen, rec.segments), (vec![(1, vec![1; 30])], 2));
    }

    #[test]
    fn one_sync_data_per_group_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let (config, faults) = faulty(tmp.path(), 64 << 20);
        let (mut log, _, _) = open(config).unwrap();
        let (writes, syncs) = (faults.writes(), faults.syncs());
        for i in 1..101 {
            log.append(&payload(i)).unwrap();
        }
        assert_eq!(
            (faults.writes(), faults.syncs()),
            (writes, syncs),
            "append buffers"
        );
        log.sync().unwrap();
        assert_eq!((faults.writes(), faults.syncs()), (writes + 1, syncs + 1));
        log.sync().unwrap(); // nothing buffered: no write, no fsync
        assert_eq!((faults.writes(), faults.syncs()), (writes + 1, syncs + 1));
        drop(log);
        assert_eq!(open(cfg(tmp.path())).unwrap().2.len(), 100);
    }
}
