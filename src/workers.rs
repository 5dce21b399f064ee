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
    pub fn start(count: usize) -> std::io::Result<Self> {
        let mut workers = Workers {
            handles: Vec::with_capacity(count),
            next: AtomicUsize::new(0),
            stops: Vec::with_capacity(count),
            threads: Vec::with_capacity(count),
        };
        for index in 1..=count {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            workers.handles.push(runtime.handle().clone());
            workers.stops.push(stop);
            workers.threads.push(
                std::thread::Builder::new()
                    .name(format!("ekyc-data-{index}"))
                    .spawn(move || {
                        WORKER.with(|w| w.set(index));
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

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop_all(false);
    }
}
