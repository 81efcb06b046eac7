//! The counts on disk, under `<data_dir>/usage/`: `names.json` (the id ↔ index table),
//! one `day-YYYY-MM-DD.bin` and `month-YYYY-MM.bin` per period (little-endian: magic,
//! entry count, then packed key and value pairs, sorted), and `distinct.bin` (the open
//! periods' salts and sketches). Every file is written whole to a temporary name, synced
//! and renamed over the old one, so a crash leaves the old file or the new, never half of
//! one. Names are written before the tables that use them, and tables before the sketch
//! file that may have dropped a closed period.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use jiff::civil::Date;
use rustc_hash::FxHashMap;

use super::UsageError;
use super::counters::{Archive, Changes, Names, NamesFile, Table};
use super::distinct::{Distinct, M, PeriodKey, PeriodSketches, Sketch};

const TABLE_MAGIC: &[u8; 4] = b"PVU1";
const DISTINCT_MAGIC: &[u8; 4] = b"PVD1";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> UsageError + '_ {
    move |source| UsageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, message: impl Into<String>) -> UsageError {
    UsageError::Corrupt {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn usage_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("usage")
}

/// Writes `bytes` to `path` atomically: temp file in the same directory, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), UsageError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".tmp-{name}"));
    let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io(path))
}

fn encode_table(t: &Table) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + t.0.len() * 16);
    out.extend_from_slice(TABLE_MAGIC);
    out.extend_from_slice(&(t.0.len() as u64).to_le_bytes());
    for (k, v) in &t.0 {
        out.extend_from_slice(&k.to_le_bytes());
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn decode_table(path: &Path, b: &[u8]) -> Result<Table, UsageError> {
    if b.get(..4) != Some(TABLE_MAGIC) {
        return Err(corrupt(path, "not a usage table"));
    }
    let n = u64_at(b, 4).ok_or_else(|| corrupt(path, "truncated"))? as usize;
    if b.len() != 12 + n.saturating_mul(16) {
        return Err(corrupt(path, "length does not match the entry count"));
    }
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let at = 12 + i * 16;
        match (u64_at(b, at), u64_at(b, at + 8)) {
            (Some(k), Some(x)) => v.push((k, x)),
            _ => return Err(corrupt(path, "truncated")),
        }
    }
    if v.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(corrupt(path, "entries are not sorted"));
    }
    Ok(Table(v))
}

fn day_file(d: Date) -> String {
    format!("day-{d}.bin")
}
fn month_file(d: Date) -> String {
    format!("month-{:04}-{:02}.bin", d.year(), d.month())
}

/// Writes what changed. `names` and `distinct` are `None` when unchanged.
pub fn write(
    data_dir: &Path,
    names: Option<&NamesFile>,
    archive: &Archive,
    changes: &Changes,
    distinct: Option<&Vec<u8>>,
) -> Result<(), UsageError> {
    let dir = usage_dir(data_dir);
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    if let Some(n) = names {
        let bytes = serde_json::to_vec(n).map_err(|e| corrupt(&dir, e.to_string()))?;
        write_atomic(&dir.join("names.json"), &bytes)?;
    }
    for d in &changes.days {
        if let Some(t) = archive.days.get(d) {
            write_atomic(&dir.join(day_file(*d)), &encode_table(t))?;
        }
    }
    for d in &changes.months {
        if let Some(t) = archive.months.get(d) {
            write_atomic(&dir.join(month_file(*d)), &encode_table(t))?;
        }
    }
    if let Some(bytes) = distinct {
        write_atomic(&dir.join("distinct.bin"), bytes)?;
    }
    Ok(())
}

/// Reads back everything under `data_dir`; an empty or missing directory is a fresh start.
pub fn load(data_dir: &Path) -> Result<(Names, Archive, Distinct), UsageError> {
    let dir = usage_dir(data_dir);
    if !dir.exists() {
        return Ok(Default::default());
    }
    let names_path = dir.join("names.json");
    let names = match fs::read(&names_path) {
        Ok(b) => {
            let f: NamesFile =
                serde_json::from_slice(&b).map_err(|e| corrupt(&names_path, e.to_string()))?;
            Names::from_file(f).ok_or_else(|| corrupt(&names_path, "too many names"))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Names::default(),
        Err(e) => return Err(io(&names_path)(e)),
    };
    let mut archive = Archive::default();
    let mut distinct = Distinct::default();
    for entry in fs::read_dir(&dir).map_err(io(&dir))? {
        let entry = entry.map_err(io(&dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with(".tmp-") {
            // A write that a crash interrupted; the real file is intact.
            let _ = fs::remove_file(&path);
            continue;
        }
        if let Some(d) = name
            .strip_prefix("day-")
            .and_then(|r| r.strip_suffix(".bin"))
        {
            let day: Date = d
                .parse()
                .map_err(|_| corrupt(&path, "bad day in file name"))?;
            let b = fs::read(&path).map_err(io(&path))?;
            archive.days.insert(day, decode_table(&path, &b)?);
        } else if let Some(m) = name
            .strip_prefix("month-")
            .and_then(|r| r.strip_suffix(".bin"))
        {
            let day: Date = format!("{m}-01")
                .parse()
                .map_err(|_| corrupt(&path, "bad month in file name"))?;
            let b = fs::read(&path).map_err(io(&path))?;
            archive.months.insert(day, decode_table(&path, &b)?);
        } else if name == "distinct.bin" {
            let b = fs::read(&path).map_err(io(&path))?;
            distinct = Distinct::from_periods(decode_distinct(&path, &b)?);
        }
    }
    Ok((names, archive, distinct))
}

pub fn encode_distinct(periods: &BTreeMap<PeriodKey, PeriodSketches>) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(DISTINCT_MAGIC);
    out.extend_from_slice(&(periods.len() as u32).to_le_bytes());
    for (k, p) in periods {
        let (kind, d) = match k {
            PeriodKey::Day(d) => (0u8, d),
            PeriodKey::Month(d) => (1u8, d),
        };
        out.push(kind);
        out.extend_from_slice(&d.year().to_le_bytes());
        out.push(d.month() as u8);
        out.push(d.day() as u8);
        out.extend_from_slice(&p.salt);
        out.extend_from_slice(&(p.sketches.len() as u32).to_le_bytes());
        let mut keys: Vec<_> = p.sketches.keys().copied().collect();
        keys.sort_unstable();
        for key in keys {
            out.extend_from_slice(&key.to_le_bytes());
            match &p.sketches[&key] {
                Sketch::Sparse(v) => {
                    out.push(0);
                    out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                    for e in v {
                        out.extend_from_slice(&e.to_le_bytes());
                    }
                }
                Sketch::Dense(r) => {
                    out.push(1);
                    out.extend_from_slice(r);
                }
            }
        }
    }
    out
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

fn decode_distinct(
    path: &Path,
    b: &[u8],
) -> Result<BTreeMap<PeriodKey, PeriodSketches>, UsageError> {
    let parse = || -> Option<BTreeMap<PeriodKey, PeriodSketches>> {
        let mut r = Reader { b, at: 0 };
        if r.take(4)? != DISTINCT_MAGIC {
            return None;
        }
        let mut out = BTreeMap::new();
        for _ in 0..r.u32()? {
            let kind = r.u8()?;
            let year = i16::from_le_bytes(r.take(2)?.try_into().ok()?);
            let (month, day) = (r.u8()? as i8, r.u8()? as i8);
            let d = Date::new(year, month, day).ok()?;
            let key = match kind {
                0 => PeriodKey::Day(d),
                1 => PeriodKey::Month(d),
                _ => return None,
            };
            let salt: [u8; 16] = r.take(16)?.try_into().ok()?;
            let mut sketches = FxHashMap::default();
            for _ in 0..r.u32()? {
                let k = r.u64()?;
                let s = match r.u8()? {
                    0 => {
                        let n = r.u32()? as usize;
                        let mut v = Vec::with_capacity(n.min(M));
                        for _ in 0..n {
                            v.push(r.u32()?);
                        }
                        Sketch::Sparse(v)
                    }
                    1 => Sketch::Dense(r.take(M)?.to_vec().into_boxed_slice()),
                    _ => return None,
                };
                sketches.insert(k, s);
            }
            out.insert(key, PeriodSketches::new(salt, sketches));
        }
        (r.at == b.len()).then_some(out)
    };
    parse().ok_or_else(|| corrupt(path, "not a valid sketch file"))
}
