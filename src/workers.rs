//! Connection workers: one thread per core, each with its own
//! single-threaded runtime and its own epoll instance.
//!
//! A session's two sockets, its timers and its task live on one worker for
//! the session's whole life. The accept loops run on the main runtime and
//! hand each admitted connection to the worker with the fewest live
//! connections, as HAProxy's threads do.
//!
//! Why not tokio's multi-threaded runtime: it has one epoll instance, and
//! only one of its threads waits in it at a time. On a machine whose cores
//! the client, the proxy and the database server share, that one poller
//! leaves a core idle while the others wait on it (measured: 8 % of the CPU
//! idle at 8 `pgbench` clients, against 2 % with a poller per core; see
//! docs/performance.md). A worker per core also keeps a session's wakeups
//! on one thread: no work stealing, no cross-thread wakeups on the data path.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio_util::task::TaskTracker;

/// The worker threads. Dropping this stops them (tasks still on them are
/// dropped, which closes their sockets).
pub struct Workers {
    workers: Vec<Worker>,
    /// Where the search for the least-loaded worker starts (rotates, so
    /// ties spread evenly).
    next: AtomicUsize,
    stop: tokio::sync::watch::Sender<bool>,
}

struct Worker {
    handle: Handle,
    live: Arc<AtomicUsize>,
}

/// Counts a connection on its worker while it lives.
struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// Start `n` worker threads (`0`: one per available core).
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let n = if n == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            n
        };
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        // Dropping `Workers` (also on an error below) stops the threads
        // already started.
        let mut started = Workers {
            workers: Vec::with_capacity(n),
            next: AtomicUsize::new(0),
            stop,
        };
        for i in 0..n {
            let mut stop_rx = stop_rx.clone();
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            // The runtime is built, run and dropped on its own thread: never
            // dropped by the caller, which may be inside a runtime.
            std::thread::Builder::new()
                .name(format!("jitgate-worker-{i}"))
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .thread_name(format!("jitgate-blk-{i}"))
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    if tx.send(Ok(rt.handle().clone())).is_err() {
                        return;
                    }
                    rt.block_on(async move {
                        // Ends on `stop`, or when `Workers` is dropped.
                        while !*stop_rx.borrow_and_update() {
                            if stop_rx.changed().await.is_err() {
                                break;
                            }
                        }
                    });
                    // Dropping the runtime here, outside any task, drops
                    // the tasks still on it.
                    drop(rt);
                })?;
            let handle = rx
                .recv()
                .map_err(|_| std::io::Error::other("a worker thread ended at start"))??;
            started.workers.push(Worker {
                handle,
                live: Arc::new(AtomicUsize::new(0)),
            });
        }
        Ok(started)
    }

    /// Stop the threads: tasks still on them are dropped, which closes
    /// their sockets. Used when shutdown's grace period is over.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// How many worker threads there are.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Always false: there is at least one worker.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Run `f(stream)` on the least-loaded worker, tracked by `tracker`.
    /// The stream is moved off the calling runtime's poller onto the
    /// worker's. A stream that cannot be moved is dropped (closed).
    pub fn spawn<F, Fut>(&self, tracker: &TaskTracker, stream: TcpStream, f: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(w) = self.pick() else {
            return;
        };
        let std = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "could not hand a connection to a worker");
                return;
            }
        };
        w.live.fetch_add(1, Ordering::Relaxed);
        let live = Live(w.live.clone());
        tracker.spawn_on(
            async move {
                let _live = live;
                match TcpStream::from_std(std) {
                    Ok(s) => f(s).await,
                    Err(e) => {
                        tracing::debug!(error = %e, "a worker could not take a connection");
                    }
                }
            },
            &w.handle,
        );
    }

    fn pick(&self) -> Option<&Worker> {
        let n = self.workers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .filter_map(|i| self.workers.get((start + i) % n.max(1)))
            .min_by_key(|w| w.live.load(Ordering::Relaxed))
    }
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("threads", &self.workers.len())
            .finish()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    async fn pair(l: &tokio::net::TcpListener) -> (TcpStream, TcpStream) {
        let addr = l.local_addr().unwrap();
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (c.unwrap(), s.unwrap().0)
    }

    #[tokio::test]
    async fn connections_spread_over_the_workers_and_end_when_they_stop() {
        let workers = Workers::start(2).unwrap();
        assert_eq!(workers.len(), 2);
        let tracker = TaskTracker::new();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut clients = Vec::new();
        for _ in 0..6 {
            let (client, server) = pair(&l).await;
            clients.push(client);
            let tx = tx.clone();
            workers.spawn(&tracker, server, move |mut s| async move {
                let name = std::thread::current().name().unwrap_or("").to_string();
                tx.send(name).unwrap();
                // Hold the connection until the worker stops.
                let mut b = [0u8; 1];
                let _ = s.read(&mut b).await;
            });
        }
        let mut on = BTreeMap::new();
        for _ in 0..6 {
            let name = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .unwrap();
            *on.entry(name).or_insert(0) += 1;
        }
        // Least-loaded placement: three each, on the worker threads.
        assert_eq!(
            on,
            BTreeMap::from([
                ("jitgate-worker-0".to_string(), 3),
                ("jitgate-worker-1".to_string(), 3)
            ])
        );
        assert!(workers
            .workers
            .iter()
            .all(|w| w.live.load(Ordering::Relaxed) == 3));
        // Stopping the workers drops their tasks, which closes the sockets.
        drop(workers);
        for mut c in clients {
            let mut b = [0u8; 1];
            let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut b))
                .await
                .expect("the worker closed the connection")
                .unwrap_or(0);
            assert_eq!(n, 0);
        }
        tracker.close();
        tokio::time::timeout(Duration::from_secs(5), tracker.wait())
            .await
            .unwrap();
    }
}
