//! `du`, `gc` and `verify`: looking after a cache folder.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::digest::{ObjectDigest, StageKey};
use crate::fsutil::{hash_file, remove_all};
use crate::store::OutputKind;
use crate::Cache;

/// Bytes and file counts per area of the cache.
#[derive(Debug, Default, Clone)]
pub struct DiskUsage {
    /// `(area, files, bytes)` for objects, actions, runs, trees, tmp, state.
    pub areas: Vec<(String, u64, u64)>,
}

fn walk_usage(path: &Path) -> (u64, u64) {
    let mut files = 0;
    let mut bytes = 0;
    if let Ok(entries) = fs::read_dir(path) {
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                let (f, b) = walk_usage(&entry.path());
                files += f;
                bytes += b;
            } else {
                files += 1;
                bytes += meta.len();
            }
        }
    }
    (files, bytes)
}

/// What `gc` keeps.
#[derive(Debug, Clone)]
pub struct GcPolicy {
    /// Stage keys referenced by lockfiles: always kept.
    pub roots: BTreeSet<StageKey>,
    /// Entries created within this long are kept too (recent runs of other branches).
    pub keep_recent: Duration,
    /// Only report what would be removed.
    pub dry_run: bool,
}

/// What `gc` removed (or would remove).
#[derive(Debug, Default, Clone)]
pub struct GcReport {
    /// Action entries removed.
    pub entries: u64,
    /// Objects removed.
    pub objects: u64,
    /// Run folders removed.
    pub runs: u64,
    /// Bytes freed.
    pub bytes: u64,
    /// What could not be removed (a read-only cache), with why; not counted above.
    pub failed: Vec<(PathBuf, String)>,
}

impl GcReport {
    /// Removes `path` (or, in a dry run, only counts it), adding its bytes; true when it is
    /// gone (or would be).
    fn remove(&mut self, path: &Path, dry_run: bool) -> bool {
        let bytes = match fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => walk_usage(path).1,
            Ok(meta) => meta.len(),
            Err(_) => 0,
        };
        if !dry_run {
            if let Err(e) = remove_all(path) {
                self.failed.push((path.to_path_buf(), e.to_string()));
                return false;
            }
        }
        self.bytes += bytes;
        true
    }
}

/// What `verify` found.
#[derive(Debug, Default, Clone)]
pub struct VerifyReport {
    /// Objects re-hashed.
    pub objects_checked: u64,
    /// Objects whose content did not match their name, moved to quarantine.
    pub quarantined: Vec<PathBuf>,
    /// Action entries that do not parse, name missing objects, or were computed from a
    /// corrupt input (removed).
    pub bad_entries: Vec<(PathBuf, String)>,
    /// Tree checkouts that no longer match their manifest (removed; rebuilt when needed).
    pub bad_checkouts: Vec<PathBuf>,
    /// What verify found but could not fix (a read-only cache): the path and why.
    pub unfixed: Vec<(PathBuf, String)>,
}

impl VerifyReport {
    /// Whether nothing was found.
    pub fn is_clean(&self) -> bool {
        self.quarantined.is_empty()
            && self.bad_entries.is_empty()
            && self.bad_checkouts.is_empty()
            && self.unfixed.is_empty()
    }
}

/// Objects younger than this are never collected: a concurrent run may have stored them and
/// not yet written its action entry.
const OBJECT_GRACE: Duration = Duration::from_secs(3600);

/// How long ago a file or folder came into the cache: measured from the later of its mtime
/// and its ctime. A stage's output may carry an old mtime (`tar x`, `cp -p`), but ingesting it
/// (rename, chmod) sets the ctime to now, and no tool can set a ctime back.
fn age(path: &Path) -> Duration {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = fs::symlink_metadata(path) else {
        return Duration::ZERO;
    };
    let changed = SystemTime::UNIX_EPOCH
        + Duration::new(
            meta.ctime().max(0) as u64,
            meta.ctime_nsec().clamp(0, 999_999_999) as u32,
        );
    let latest = meta.modified().map_or(changed, |m| m.max(changed));
    SystemTime::now().duration_since(latest).unwrap_or_default()
}

impl Cache {
    /// Sizes of every area of the cache.
    pub fn disk_usage(&self) -> DiskUsage {
        let mut usage = DiskUsage::default();
        for area in [
            "objects",
            "actions",
            "runs",
            "trees",
            "tmp",
            "state",
            "quarantine",
            "slurm",
        ] {
            let (files, bytes) = walk_usage(&self.root().join(area));
            usage.areas.push((area.to_string(), files, bytes));
        }
        usage
    }

    /// Removes what no root and no recent run references. The caller holds the cache
    /// exclusively ([`crate::Locks::lock_for_gc`]: no run uses it, since runs hold
    /// [`crate::Locks::lock_in_use`]) and read the roots after taking it, so nothing a live run
    /// reads or has just written, or is about to record, is collected.
    pub fn gc(&self, policy: &GcPolicy, _exclusive: &crate::GcGuard) -> GcReport {
        let mut report = GcReport::default();
        let mut live_keys = BTreeSet::new();
        let mut live_objects: BTreeSet<ObjectDigest> = BTreeSet::new();
        for (path, entry) in self.actions().all_entries() {
            let keep = match &entry {
                Some(entry) => policy.roots.contains(&entry.key) || age(&path) < policy.keep_recent,
                None => age(&path) < OBJECT_GRACE,
            };
            if keep {
                if let Some(entry) = entry {
                    live_keys.insert(entry.key);
                    for output in entry.outputs.values() {
                        live_objects.insert(output.digest);
                        if output.kind == OutputKind::Dir {
                            if let Ok(tree) = self.store().read_tree(&output.digest) {
                                live_objects.extend(tree.entries.iter().map(|e| e.digest));
                            }
                        }
                    }
                }
            } else {
                if report.remove(&path, policy.dry_run) {
                    report.entries += 1;
                }
            }
        }
        for (path, digest) in list_objects(self.store().objects_root()) {
            let is_live = digest.is_some_and(|d| live_objects.contains(&d));
            if !is_live && age(&path) > OBJECT_GRACE && report.remove(&path, policy.dry_run) {
                report.objects += 1;
            }
        }
        if let Ok(trees) = fs::read_dir(self.root().join("trees").join("v1")) {
            for tree in trees.flatten() {
                let digest = tree.file_name().to_string_lossy().parse::<ObjectDigest>();
                let live = digest.is_ok_and(|d| live_objects.contains(&d));
                if !live && age(&tree.path()) > OBJECT_GRACE && !policy.dry_run {
                    let _ = remove_all(&tree.path());
                }
            }
        }
        if let Ok(keys) = fs::read_dir(self.runs().runs_root()) {
            for key_dir in keys.flatten() {
                let key = key_dir.file_name().to_string_lossy().parse::<StageKey>();
                let keep = key.is_ok_and(|k| live_keys.contains(&k))
                    || age(&key_dir.path()) < policy.keep_recent;
                if !keep && report.remove(&key_dir.path(), policy.dry_run) {
                    report.runs += 1;
                }
            }
        }
        // Leftover temp folders of processes that died (SIGKILL, power loss).
        if let Ok(tmps) = fs::read_dir(self.root().join("tmp")) {
            for tmp in tmps.flatten() {
                let name = tmp.file_name().to_string_lossy().into_owned();
                let pid = name
                    .split(['-', '.'])
                    .filter_map(|p| p.parse::<u32>().ok())
                    .next();
                let dead = pid.is_some_and(|p| !crate::fsutil::process_is_alive(p));
                if (dead || age(&tmp.path()) > OBJECT_GRACE) && !policy.dry_run {
                    let _ = remove_all(&tmp.path());
                }
            }
        }
        report
    }

    /// Re-hashes every object and moves mismatching ones to `quarantine/v1/`; removes action
    /// entries that do not parse, name objects that are gone (a directory output: any of its
    /// files), or were computed from a corrupt input, and, transitively, the entries computed
    /// from their outputs; removes tree checkouts that differ from their manifest. What it
    /// cannot remove (a read-only cache) is reported in `unfixed`, never as fixed.
    pub fn verify(&self) -> VerifyReport {
        let mut report = VerifyReport::default();
        let quarantine = self.area("quarantine");
        // Digests whose content cannot be trusted: corrupt objects, then the outputs of every
        // entry computed from one.
        let mut bad: BTreeSet<ObjectDigest> = BTreeSet::new();
        for (path, digest) in list_objects(self.store().objects_root()) {
            report.objects_checked += 1;
            let actual = hash_file(&path).ok();
            if digest.is_none() || actual != digest {
                bad.extend(digest);
                let name = path
                    .strip_prefix(self.store().objects_root())
                    .map(|p| p.to_string_lossy().replace('/', ""))
                    .unwrap_or_else(|_| "unknown".into());
                let dest = quarantine.join(name);
                match fs::create_dir_all(&quarantine).and_then(|()| fs::rename(&path, &dest)) {
                    Ok(()) => report.quarantined.push(dest),
                    Err(e) => report
                        .unfixed
                        .push((path, format!("corrupt object, cannot quarantine it: {e}"))),
                }
            }
        }
        let mut entries: Vec<(PathBuf, Option<crate::ActionEntry>)> = self.actions().all_entries();
        // The files of a directory output, by the manifest's digest.
        let files_of = |digest: &ObjectDigest| {
            self.store()
                .read_tree(digest)
                .map(|t| t.entries.iter().map(|e| e.digest).collect::<Vec<_>>())
                .ok()
        };
        loop {
            let mut removed_any = false;
            let mut kept = Vec::new();
            for (path, entry) in entries {
                let problem = match &entry {
                    None => Some("does not parse".to_string()),
                    Some(entry) => entry_problem(self, entry, &bad, &files_of),
                };
                match problem {
                    None => kept.push((path, entry)),
                    Some(problem) => {
                        removed_any = true;
                        if let Some(entry) = &entry {
                            bad.extend(entry.outputs.values().map(|o| o.digest));
                        }
                        match fs::remove_file(&path) {
                            Ok(()) => report.bad_entries.push((path, problem)),
                            Err(e) => report
                                .unfixed
                                .push((path, format!("{problem}; cannot remove the entry: {e}"))),
                        }
                    }
                }
            }
            entries = kept;
            if !removed_any {
                break;
            }
        }
        if let Ok(trees) = fs::read_dir(self.area("trees")) {
            for tree in trees.flatten() {
                let Ok(digest) = tree.file_name().to_string_lossy().parse::<ObjectDigest>() else {
                    continue;
                };
                if checkout_matches(self, &digest, &tree.path()) {
                    continue;
                }
                match remove_all(&tree.path()) {
                    Ok(()) => report.bad_checkouts.push(tree.path()),
                    Err(e) => report.unfixed.push((
                        tree.path(),
                        format!("tree checkout differs from its manifest, cannot remove it: {e}"),
                    )),
                }
            }
        }
        report
    }
}

/// Every object file with the digest its path names (`None` for a stray file).
fn list_objects(root: &Path) -> Vec<(PathBuf, Option<ObjectDigest>)> {
    let mut out = Vec::new();
    let Ok(shards) = fs::read_dir(root) else {
        return out;
    };
    for shard in shards.flatten() {
        let prefix = shard.file_name().to_string_lossy().into_owned();
        let Ok(files) = fs::read_dir(shard.path()) else {
            continue;
        };
        for file in files.flatten() {
            let name = file.file_name().to_string_lossy().into_owned();
            // An object being written (or left by a writer that was killed, removed here) is
            // not an object yet: never reported as corrupt.
            if name.starts_with(".object.tmp-") {
                if crate::fsutil::is_orphaned_temp(&file.path(), "object") {
                    let _ = fs::remove_file(file.path());
                }
                continue;
            }
            let digest = format!("{prefix}{name}").parse::<ObjectDigest>().ok();
            out.push((file.path(), digest));
        }
    }
    out.sort();
    out
}

/// Why an entry cannot be trusted: an output or one of a directory output's files is gone, or
/// an input or output is known bad.
fn entry_problem(
    cache: &Cache,
    entry: &crate::ActionEntry,
    bad: &BTreeSet<ObjectDigest>,
    files_of: &impl Fn(&ObjectDigest) -> Option<Vec<ObjectDigest>>,
) -> Option<String> {
    for (name, digests) in &entry.inputs {
        if let Some(d) = digests.iter().find(|d| is_bad(d, bad, files_of)) {
            return Some(format!(
                "computed from input `{name}` ({}), which is corrupt",
                d.short()
            ));
        }
    }
    for (name, output) in &entry.outputs {
        if !cache.store().contains(&output.digest) || is_bad(&output.digest, bad, files_of) {
            return Some(format!(
                "output `{name}` is missing from the store or corrupt"
            ));
        }
        if output.kind == OutputKind::Dir {
            match files_of(&output.digest) {
                None => return Some(format!("output `{name}` has no readable tree manifest")),
                Some(files) => {
                    if let Some(missing) = files.iter().find(|d| !cache.store().contains(d)) {
                        return Some(format!(
                            "a file of output `{name}` ({}) is missing from the store",
                            missing.short()
                        ));
                    }
                }
            }
        }
    }
    None
}

/// Whether a digest is bad itself or names a tree with a bad file.
fn is_bad(
    digest: &ObjectDigest,
    bad: &BTreeSet<ObjectDigest>,
    files_of: &impl Fn(&ObjectDigest) -> Option<Vec<ObjectDigest>>,
) -> bool {
    bad.contains(digest)
        || (!bad.is_empty()
            && files_of(digest).is_some_and(|files| files.iter().any(|f| bad.contains(f))))
}

/// Whether a tree checkout holds exactly its manifest's files, each the stored object (the
/// same inode, or the same content for a copy).
fn checkout_matches(cache: &Cache, digest: &ObjectDigest, dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(manifest) = cache.store().read_tree(digest) else {
        return false;
    };
    let mut count = 0usize;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        let Ok(entries) = fs::read_dir(&at) else {
            return false;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                count += 1;
            }
        }
    }
    count == manifest.entries.len()
        && manifest.entries.iter().all(|e| {
            let file = dir.join(&e.path);
            let object = cache.store().path_of(&e.digest);
            match (fs::symlink_metadata(&file), fs::metadata(&object)) {
                (Ok(f), Ok(o)) if f.is_file() => {
                    (f.ino() == o.ino() && f.dev() == o.dev())
                        || hash_file(&file).is_ok_and(|d| d == e.digest)
                }
                _ => false,
            }
        })
}
