//! The conventional `process_*` metrics (the names Prometheus' own clients use, so
//! stock dashboards work): CPU time, memory, open file descriptors and the start time,
//! read from `/proc/self` when scraped. Elsewhere than Linux it exposes nothing. Must
//! not cache what it reads: a scrape shows the process as it is.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

#[derive(Debug)]
pub(super) struct ProcessCollector {
    /// `sysconf(_SC_CLK_TCK)`: the unit of the CPU times and start time in `stat`.
    ticks_per_second: f64,
    page_bytes: f64,
    /// Unix seconds; `None` where `/proc` cannot tell.
    start_time: Option<f64>,
}

/// The fields of `/proc/self/stat` read here (proc(5)).
#[derive(Debug, Default, PartialEq)]
struct Stat {
    utime_ticks: u64,
    stime_ticks: u64,
    start_ticks_after_boot: u64,
    virtual_bytes: u64,
    resident_pages: u64,
}

impl Stat {
    /// Parses the line; the command name (field 2) may hold spaces and parentheses, so
    /// the fields are counted from its last `)`.
    fn parse(line: &str) -> Option<Self> {
        let after_name = &line[line.rfind(')')? + 1..];
        // Field 3 (state) is the first here: field N is at N - 3.
        let fields: Vec<&str> = after_name.split_ascii_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(Self {
            utime_ticks: field(14)?,
            stime_ticks: field(15)?,
            start_ticks_after_boot: field(22)?,
            virtual_bytes: field(23)?,
            resident_pages: field(24)?,
        })
    }

    fn read() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/self/stat").ok()?)
    }
}

/// The boot time (Unix seconds), the `btime` line of `/proc/stat`.
fn boot_time() -> Option<u64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

impl ProcessCollector {
    pub(super) fn new() -> Self {
        // SAFETY: sysconf only reads a configuration value.
        let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
        let ticks_per_second = if ticks > 0 { ticks as f64 } else { 100.0 };
        let start_time = Stat::read()
            .zip(boot_time())
            .map(|(stat, boot)| boot as f64 + stat.start_ticks_after_boot as f64 / ticks_per_second);
        Self {
            ticks_per_second,
            page_bytes: if page > 0 { page as f64 } else { 4096.0 },
            start_time,
        }
    }
}

fn max_open_files() -> Option<f64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit.rlim_cur as f64)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(stat) = Stat::read() else {
            return Ok(());
        };
        let cpu = (stat.utime_ticks + stat.stime_ticks) as f64 / self.ticks_per_second;
        encoder
            .encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent, in seconds",
                None,
                MetricType::Counter,
            )?
            .encode_counter::<NoLabelSet, _, u64>(&cpu, None)?;
        let mut gauge = |name: &str, help: &str, value: f64| {
            encoder
                .encode_descriptor(name, help, None, MetricType::Gauge)?
                .encode_gauge(&value)
        };
        gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            stat.resident_pages as f64 * self.page_bytes,
        )?;
        gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            stat.virtual_bytes as f64,
        )?;
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            gauge("process_open_fds", "Open file descriptors", fds.count() as f64)?;
        }
        if let Some(max) = max_open_files() {
            gauge("process_max_fds", "The soft limit on open file descriptors", max)?;
        }
        if let Some(start) = self.start_time {
            gauge(
                "process_start_time_seconds",
                "When the process started, in Unix seconds",
                start,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let line = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 1200 0 0 0 250 75 0 0 20 0 9 0 \
                    123456 987654321 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 3 0 0";
        assert_eq!(
            Stat::parse(line),
            Some(Stat {
                utime_ticks: 250,
                stime_ticks: 75,
                start_ticks_after_boot: 123456,
                virtual_bytes: 987654321,
                resident_pages: 2048,
            })
        );
        assert_eq!(Stat::parse("4242 (truncated"), None);
    }
}
