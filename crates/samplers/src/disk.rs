//! The block device behind a directory, from `/proc/diskstats`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use procfs::DiskStat;

use crate::{num, rate, Row, Sampler, SamplerError};

/// `/proc/diskstats` counts sectors of 512 bytes whatever the device's sector size.
const SECTOR_BYTES: u64 = 512;

/// Which `/proc/diskstats` entries a [`DiskSampler`] reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskTarget {
    /// The entry of the directory's filesystem device (a partition, a whole disk, `dm-N`, ...).
    Device { name: String, major: u32, minor: u32 },
    /// No block device holds the directory (overlay, tmpfs, network filesystems): the sum over
    /// the physical whole disks, `disks`, and why.
    SystemWide { disks: Vec<String>, reason: String },
}

impl DiskTarget {
    /// The `device` cell of `disk.csv`: the device name, or `system`.
    pub fn label(&self) -> &str {
        match self {
            DiskTarget::Device { name, .. } => name,
            DiskTarget::SystemWide { .. } => "system",
        }
    }
}

/// Splits a Linux `st_dev` into (major, minor) the way glibc's `major()`/`minor()` do.
pub(crate) fn split_dev(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major as u32, minor as u32)
}

/// Finds the `/proc/diskstats` entries for the filesystem that holds `dir`.
pub fn resolve(dir: &Path) -> Result<DiskTarget, SamplerError> {
    let meta = std::fs::metadata(dir).map_err(|source| SamplerError::Io { path: dir.to_owned(), source })?;
    let stats = procfs::diskstats().map_err(|e| SamplerError::proc("/proc/diskstats", e))?;
    let whole_disks = whole_disk_names();
    Ok(select(&stats, split_dev(meta.dev()), whole_disks.as_deref()))
}

/// The names in `/sys/block` (whole disks, no partitions), if readable.
fn whole_disk_names() -> Option<Vec<String>> {
    let entries = std::fs::read_dir("/sys/block").ok()?;
    Some(entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
}

/// Virtual devices left out of the system-wide sum: they are empty (ram, loop, zram) or stacked
/// on the physical disks, which would count the same bytes twice (device mapper, md RAID).
fn is_virtual(name: &str) -> bool {
    ["loop", "ram", "zram", "dm-", "md"].iter().any(|p| name.starts_with(p))
}

/// The pure part of [`resolve`]: the entry whose numbers match `dev`, or else the system-wide
/// sum over the physical whole disks (`whole_disks` lists them when `/sys/block` is readable;
/// without it every non-virtual entry counts, partitions included).
pub(crate) fn select(stats: &[DiskStat], dev: (u32, u32), whole_disks: Option<&[String]>) -> DiskTarget {
    let (major, minor) = dev;
    if let Some(s) = stats.iter().find(|s| (s.major as u32, s.minor as u32) == (major, minor)) {
        return DiskTarget::Device { name: s.name.clone(), major, minor };
    }
    let reason = if major == 0 {
        format!("the filesystem has no block device (device {major}:{minor}: overlay, tmpfs or network)")
    } else {
        format!("device {major}:{minor} is not in /proc/diskstats")
    };
    let disks = stats
        .iter()
        .filter(|s| !is_virtual(&s.name))
        .filter(|s| whole_disks.is_none_or(|w| w.contains(&s.name)))
        .map(|s| s.name.clone())
        .collect();
    DiskTarget::SystemWide { disks, reason }
}

/// Cumulative counters of the target, summed over its entries.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    sectors_read: u64,
    sectors_written: u64,
    reads: u64,
    writes: u64,
    /// Milliseconds the busiest entry spent with I/O in flight.
    io_ticks_ms: u64,
}

/// Samples the block device that holds a directory (the disk tier's).
///
/// Writes `disk.csv`, one row per sample (none on the first, which sets the baseline):
///
/// | column | unit |
/// |---|---|
/// | `device` | the `/proc/diskstats` name (`nvme0n1p2`, `dm-0`), or `system` for the fallback |
/// | `read_bytes_s` | bytes/s read |
/// | `write_bytes_s` | bytes/s written |
/// | `read_iops` | completed reads/s |
/// | `write_iops` | completed writes/s |
/// | `busy_pct` | % of the interval with I/O in flight (`io_ticks`); for `system`, the busiest disk's |
///
/// When the directory is on a filesystem without a block device the sampler sums the physical
/// disks and says so in its [`note`](Sampler::note) (recorded in the status).
pub struct DiskSampler {
    target: DiskTarget,
    previous: Option<(f64, Vec<(String, Counters)>)>,
}

impl DiskSampler {
    /// Resolves `dir` (see [`resolve`]).
    pub fn for_dir(dir: &Path) -> Result<DiskSampler, SamplerError> {
        Ok(DiskSampler::new(resolve(dir)?))
    }

    /// Samples an already resolved target.
    pub fn new(target: DiskTarget) -> DiskSampler {
        DiskSampler { target, previous: None }
    }

    /// What the sampler reads.
    pub fn target(&self) -> &DiskTarget {
        &self.target
    }

    fn read(&self) -> Result<Vec<(String, Counters)>, SamplerError> {
        let stats = procfs::diskstats().map_err(|e| SamplerError::proc("/proc/diskstats", e))?;
        let wanted = |s: &DiskStat| match &self.target {
            DiskTarget::Device { major, minor, .. } => (s.major as u32, s.minor as u32) == (*major, *minor),
            DiskTarget::SystemWide { disks, .. } => disks.contains(&s.name),
        };
        let found: Vec<_> = stats
            .iter()
            .filter(|s| wanted(s))
            .map(|s| {
                let c = Counters {
                    sectors_read: s.sectors_read,
                    sectors_written: s.sectors_written,
                    reads: s.reads,
                    writes: s.writes,
                    io_ticks_ms: s.time_in_progress,
                };
                (s.name.clone(), c)
            })
            .collect();
        if found.is_empty() {
            if let DiskTarget::Device { name, .. } = &self.target {
                return Err(SamplerError::Io {
                    path: PathBuf::from("/proc/diskstats"),
                    source: std::io::Error::other(format!("device {name} disappeared")),
                });
            }
        }
        Ok(found)
    }
}

impl Sampler for DiskSampler {
    fn name(&self) -> &str {
        "disk"
    }

    fn columns(&self) -> Vec<String> {
        ["device", "read_bytes_s", "write_bytes_s", "read_iops", "write_iops", "busy_pct"]
            .map(String::from)
            .to_vec()
    }

    fn note(&self) -> Option<String> {
        match &self.target {
            DiskTarget::Device { name, major, minor } => Some(format!("device {name} ({major}:{minor})")),
            DiskTarget::SystemWide { disks, reason } => {
                Some(format!("system-wide sum of [{}]: {reason}", disks.join(", ")))
            }
        }
    }

    fn sample(&mut self, t: f64) -> Result<Vec<Row>, SamplerError> {
        let now = self.read()?;
        let Some((t0, before)) = self.previous.replace((t, now.clone())) else {
            return Ok(Vec::new());
        };
        let dt = t - t0;
        let mut sum = [0.0f64; 4];
        let mut busy = 0.0f64;
        for (name, c) in &now {
            // A disk that appeared since the last sample has no baseline: skip it this time.
            let Some((_, b)) = before.iter().find(|(n, _)| n == name) else { continue };
            sum[0] += rate(c.sectors_read, b.sectors_read, dt) * SECTOR_BYTES as f64;
            sum[1] += rate(c.sectors_written, b.sectors_written, dt) * SECTOR_BYTES as f64;
            sum[2] += rate(c.reads, b.reads, dt);
            sum[3] += rate(c.writes, b.writes, dt);
            // io_ticks are ms; ms per s / 10 = percent.
            busy = busy.max((rate(c.io_ticks_ms, b.io_ticks_ms, dt) / 10.0).min(100.0));
        }
        let mut row = vec![self.target.label().to_owned()];
        row.extend(sum.iter().map(|&v| num(v)));
        row.push(num(busy));
        Ok(vec![row])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(line: &str) -> DiskStat {
        DiskStat::from_line(line).unwrap()
    }

    /// `input`: diskstats lines, then `dev MAJ:MIN`, then optionally `sys name name...`.
    fn check(input: &str, expect: &str) {
        let mut stats = Vec::new();
        let mut dev = (0, 0);
        let mut sys: Option<Vec<String>> = None;
        for line in input.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(d) = line.strip_prefix("dev ") {
                let (a, b) = d.split_once(':').unwrap();
                dev = (a.parse().unwrap(), b.parse().unwrap());
            } else if let Some(names) = line.strip_prefix("sys") {
                sys = Some(names.split_whitespace().map(String::from).collect());
            } else {
                stats.push(stat(line));
            }
        }
        let got = match select(&stats, dev, sys.as_deref()) {
            DiskTarget::Device { name, major, minor } => format!("device {name} {major}:{minor}"),
            DiskTarget::SystemWide { disks, reason } => format!("system [{}] {reason}", disks.join(",")),
        };
        assert_eq!(got, expect);
    }

    const STATS: &str = "
        7 0 loop0 1 0 2 0 0 0 0 0 0 0 0
        259 0 nvme0n1 10 0 80 1 20 0 160 2 0 3 3
        259 1 nvme0n1p1 4 0 32 1 8 0 64 2 0 3 3
        259 2 nvme0n1p2 6 0 48 1 12 0 96 2 0 3 3
        8 0 sda 1 0 8 1 1 0 8 1 0 1 1
        253 0 dm-0 6 0 48 1 12 0 96 2 0 3 3
        251 0 zram0 1 0 8 0 0 0 0 0 0 0 0
    ";

    #[test]
    fn resolution() {
        check(&format!("{STATS} dev 259:2"), "device nvme0n1p2 259:2");
        check(&format!("{STATS} dev 253:0"), "device dm-0 253:0");
        check(&format!("{STATS} dev 8:0"), "device sda 8:0");
        check(
            &format!("{STATS} dev 0:51 \n sys loop0 nvme0n1 sda dm-0 zram0"),
            "system [nvme0n1,sda] the filesystem has no block device (device 0:51: overlay, tmpfs or network)",
        );
        check(
            &format!("{STATS} dev 9:9"),
            "system [nvme0n1,nvme0n1p1,nvme0n1p2,sda] device 9:9 is not in /proc/diskstats",
        );
    }

    #[test]
    fn split_dev_matches_glibc() {
        // (st_dev, major, minor): classic 16-bit, large minor, large major.
        for (dev, major, minor) in
            [(0xfe00u64, 254, 0), (0x0803, 8, 3), (0x10_0103, 1, 0x103), (0x1000_0000_0801, 0x1008, 1)]
        {
            assert_eq!(split_dev(dev), (major, minor), "st_dev {dev:#x}");
        }
    }
}
