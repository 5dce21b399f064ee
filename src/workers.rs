//! The data plane's threads: one current-thread tokio runtime per core, nginx-style.
//! An accepted data connection is handed to one worker (round robin) and lives there:
//! its requests, the upstream connections they use (each worker has its own pool, see
//! `proxy::forward`) and every wake-up stay on that thread, so a request never pays
//! for cross-thread wake-ups or work stealing. Must not hold anything but runtimes:
//! shared state stays in `App`.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// 1..=N on a worker thread, 0 anywhere else.
pub fn current_worker() -> usize {
    WORKER.with(Cell::get)
}

/// Makes this thread count as worker `index` (tests of per-worker sharding).
#[cfg(test)]
pub(crate) fn act_as_worker(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// How many data-plane threads `configured` means: 0 is one per available core.
pub fn thread_count(configured: usize) -> usize {
    if configured > 0 {
        configured
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// `count` threads; with `pin`, worker i stays on the i-th CPU the process may
    /// use (wrapping around), as thread-per-core servers do: a worker that the
    /// scheduler moves, or that shares a CPU with the other worker while one sits
    /// idle, stalls every connection it holds. On 2 cores shared with the load
    /// generator and the upstream, unpinned workers' p99 at 32 connections was about
    /// 4 ms in most rounds, pinned 1.1-1.9 ms (docs/PERFORMANCE.md).
    pub fn start(count: usize, pin: bool) -> std::io::Result<Self> {
        let cpus = if pin { allowed_cpus() } else { Vec::new() };
        let mut workers = Workers {
            handles: Vec::with_capacity(count),
            next: AtomicUsize::new(0),
            stops: Vec::with_capacity(count),
            threads: Vec::with_capacity(count),
        };
        for index in 1..=count {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            let cpu = (!cpus.is_empty()).then(|| cpus[(index - 1) % cpus.len()]);
            workers.handles.push(runtime.handle().clone());
            workers.stops.push(stop);
            workers.threads.push(
                std::thread::Builder::new()
                    .name(format!("ekyc-data-{index}"))
                    .spawn(move || {
                        WORKER.with(|w| w.set(index));
                        if let Some(cpu) = cpu
                            && !pin_current_thread(cpu)
                        {
                            tracing::warn!(cpu, worker = index, "could not pin the data-plane thread to its CPU");
                        }
                        runtime.block_on(async {
                            let _ = stopped.await;
                        });
                    })?,
            );
        }
        Ok(workers)
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Runs `task` on the next worker.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[i].spawn(task);
    }

    /// Ends every worker (tasks still running are dropped) and waits for the threads.
    pub fn stop(mut self) {
        self.stop_all(true);
    }

    fn stop_all(&mut self, join: bool) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        if join {
            for thread in self.threads.drain(..) {
                let _ = thread.join();
            }
        }
    }
}

/// The CPUs this process may run on (its affinity mask), in order; empty when unknown.
#[cfg(target_os = "linux")]
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set, and sched_getaffinity writes
    // at most the size it is given into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

#[cfg(not(target_os = "linux"))]
pub fn allowed_cpus() -> Vec<usize> {
    Vec::new()
}

/// Keeps the calling thread on `cpu`; false if the system refused.
#[cfg(target_os = "linux")]
fn pin_current_thread(cpu: usize) -> bool {
    // SAFETY: as in `allowed_cpus`; sched_setaffinity only reads the set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn pin_current_thread(_cpu: usize) -> bool {
    true
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop_all(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn affinity_seen_by_each_worker(pin: bool) -> Vec<(usize, Vec<usize>)> {
        let workers = Workers::start(2, pin).unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        for _ in 0..2 {
            let sender = sender.clone();
            workers.spawn(async move {
                sender.send((current_worker(), allowed_cpus())).unwrap();
            });
        }
        let mut seen: Vec<_> = (0..2)
            .map(|_| receiver.recv_timeout(std::time::Duration::from_secs(10)).unwrap())
            .collect();
        seen.sort();
        workers.stop();
        seen
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn pinned_workers_each_keep_to_one_allowed_cpu_and_unpinned_ones_to_all() {
        let allowed = allowed_cpus();
        assert!(!allowed.is_empty());
        assert_eq!(
            affinity_seen_by_each_worker(true),
            [(1, vec![allowed[0]]), (2, vec![allowed[1 % allowed.len()]])]
        );
        assert_eq!(
            affinity_seen_by_each_worker(false),
            [(1, allowed.clone()), (2, allowed.clone())]
        );
    }
}
