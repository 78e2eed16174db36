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

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio_util::task::TaskTracker;

thread_local! {
    /// Tasks waiting for this worker to run out of ready work ([`idle`]);
    /// `None` on threads that are not workers.
    static IDLE: RefCell<Option<IdleWaiters>> = const { RefCell::new(None) };
}

/// Keys of [`idle`] waiters.
static NEXT_IDLE_KEY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[derive(Default)]
struct IdleWaiters {
    /// Bumped each time the waiters are released.
    round: u64,
    /// Waiting now, by key. A waiter dropped before it is released (its
    /// caller's time limit passed) removes itself, so this holds only
    /// futures that are still waiting, however long the worker stays busy.
    waiting: HashMap<u64, Waker>,
}

/// Completes once this worker has no task ready to run (its run queue is
/// empty and it is about to wait for I/O or a timer), or at once on a thread
/// that is not a worker. Nothing bounds the wait but the worker's load.
pub fn idle() -> impl Future<Output = ()> {
    Idle { key: None }
}

/// Work that must happen but that nobody waits for (tearing down a session
/// whose client has been told) goes behind the other sessions woken in the
/// same wave: if the worker's [`Inbox`] just delivered more than one wake
/// from outside (a revoke or a grant's expiry wakes every session on the
/// grant from the main runtime) and those tasks have not all had their
/// turn, or tasks woken from outside wait in the runtime's own queue, or
/// others already wait here, this waits until the worker has no task ready
/// ([`idle`]), at most `limit`. Otherwise, or off the workers, it returns at
/// once: a single kill is torn down straight away, busy worker or not.
pub async fn after_others(limit: std::time::Duration) {
    let deferring = IDLE.with(|idle| idle.borrow().as_ref().map(|w| !w.waiting.is_empty()));
    let wave = match deferring {
        None => false,
        Some(true) => true,
        Some(false) => {
            WAVE.with(Cell::get)
                || Handle::try_current().is_ok_and(|h| h.metrics().global_queue_depth() > 0)
        }
    };
    if wave {
        let _ = tokio::time::timeout(limit, idle()).await;
    }
}

struct Idle {
    /// The round and key this future registered under.
    key: Option<(u64, u64)>,
}

impl Future for Idle {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let key = self.key;
        // A replaced waker is dropped after the borrow ends: dropping a
        // waker may free a task, whose own `Idle` then borrows again.
        let mut replaced = None;
        let registered = IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let w = idle.as_mut()?;
            let key = match key {
                Some((round, _)) if round != w.round => return None,
                Some(key) => key,
                // Unique across threads: a waiter dropped on another thread
                // than its own (which a single-threaded runtime never does)
                // could not remove someone else's entry.
                None => (w.round, NEXT_IDLE_KEY.fetch_add(1, Ordering::Relaxed)),
            };
            replaced = w.waiting.insert(key.1, cx.waker().clone());
            Some(key)
        });
        drop(replaced);
        self.key = registered;
        match registered {
            Some(_) => Poll::Pending,
            None => Poll::Ready(()),
        }
    }
}

impl Drop for Idle {
    fn drop(&mut self) {
        if let Some((_, k)) = self.key {
            // `try_with`: a task dropped while the thread exits finds the
            // thread-local gone, and there is nothing left to remove.
            let removed = IDLE.try_with(|idle| {
                idle.borrow_mut()
                    .as_mut()
                    .and_then(|w| w.waiting.remove(&k))
            });
            drop(removed);
        }
    }
}

/// The worker runtime's park hook: wake every [`idle`] waiter (tokio then
/// runs them instead of parking).
fn release_idle_waiters() {
    let waiting = IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let w = idle.as_mut()?;
        if w.waiting.is_empty() {
            return None;
        }
        w.round = w.round.wrapping_add(1);
        Some(std::mem::take(&mut w.waiting))
    });
    // Woken with the thread-local released: a wake only schedules.
    for (_, waker) in waiting.into_iter().flatten() {
        waker.wake();
    }
}

/// Wakes from other threads for tasks on one worker, delivered in batches.
///
/// Waking a task on a single-threaded runtime from another thread queues it
/// and writes the worker's eventfd: one system call per wake. A revoke or a
/// grant's expiry wakes every session on the grant from the main runtime,
/// thousands at once. Through the inbox the first of them wakes one task on
/// the worker (one system call), which then wakes the rest from the worker
/// itself, where a wake only queues the task.
pub(crate) struct Inbox {
    state: std::sync::Mutex<InboxState>,
    /// Batches delivered (for tests).
    batches: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct InboxState {
    wakers: Vec<Waker>,
    /// The worker's task that delivers them ([`deliver`]).
    courier: Option<Waker>,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox").finish_non_exhaustive()
    }
}

thread_local! {
    /// This worker's inbox; `None` on threads that are not workers.
    static INBOX: RefCell<Option<Arc<Inbox>>> = const { RefCell::new(None) };
    /// Set while the tasks of a batch of more than one wake (a wave) take
    /// their first turn after the courier woke them.
    static WAVE: Cell<bool> = const { Cell::new(false) };
}

/// The inbox of the worker this runs on (`None` off the workers).
pub(crate) fn inbox() -> Option<Arc<Inbox>> {
    INBOX.with(|i| i.borrow().clone())
}

impl Inbox {
    /// Only workers make one: wakes pushed into an inbox with no courier
    /// would never be delivered.
    fn new() -> Inbox {
        Inbox {
            state: std::sync::Mutex::new(InboxState::default()),
            batches: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InboxState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wake `waker`, a task on this inbox's worker: at once on the worker's
    /// own thread, else through the inbox.
    pub(crate) fn wake(self: &Arc<Self>, waker: &Waker) {
        // `try_with`: a wake from a thread that is exiting counts as remote.
        let here = INBOX
            .try_with(|i| i.borrow().as_ref().is_some_and(|o| Arc::ptr_eq(o, self)))
            .unwrap_or(false);
        if here {
            waker.wake_by_ref();
            return;
        }
        let courier = {
            let mut s = self.lock();
            s.wakers.push(waker.clone());
            // Only the first wake of a batch calls the courier: the rest
            // find it called and not yet run.
            if s.wakers.len() == 1 {
                s.courier.clone()
            } else {
                None
            }
        };
        if let Some(c) = courier {
            c.wake();
        }
    }
}

/// The courier: one task per worker that wakes, from the worker, the tasks
/// whose wakes arrived in its inbox. It keeps taking what arrives until the
/// inbox is empty (the main runtime may still be adding to it), all in one
/// turn.
///
/// A batch of more than one marks a wave ([`after_others`]) until the tasks
/// it woke have had their first turn: the courier then queues itself behind
/// them (the run queue is first in, first out) and clears the mark when it
/// runs again. By then the first of them that ended waits on [`idle`],
/// which keeps the wave visible to the rest.
async fn deliver(inbox: Arc<Inbox>) {
    // The list handed back and forth with the inbox keeps its capacity: a
    // wave of thousands does not regrow it under the lock each time.
    let mut batch: Vec<Waker> = Vec::new();
    loop {
        std::future::poll_fn(|cx| {
            let mut s = inbox.lock();
            if s.wakers.is_empty() {
                if !s.courier.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    s.courier = Some(cx.waker().clone());
                }
                return Poll::Pending;
            }
            std::mem::swap(&mut s.wakers, &mut batch);
            Poll::Ready(())
        })
        .await;
        let mut wave = false;
        loop {
            inbox.batches.fetch_add(1, Ordering::Relaxed);
            if batch.len() > 1 {
                wave = true;
                WAVE.with(|w| w.set(true));
            }
            for w in batch.drain(..) {
                w.wake();
            }
            let mut s = inbox.lock();
            if s.wakers.is_empty() {
                break;
            }
            std::mem::swap(&mut s.wakers, &mut batch);
        }
        if wave {
            behind_the_queue().await;
            WAVE.with(|w| w.set(false));
        }
    }
}

/// Completes on the task's next turn: it wakes itself, which on a
/// single-threaded runtime queues it behind the tasks already queued
/// (unlike `tokio::task::yield_now`, which waits for the I/O driver).
async fn behind_the_queue() {
    let mut queued = false;
    std::future::poll_fn(|cx| {
        if queued {
            return Poll::Ready(());
        }
        queued = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

thread_local! {
    /// Relay steps that moved bytes on this worker.
    static STEPS: Cell<u64> = const { Cell::new(0) };
    /// The busy poller, waiting for the next step ([`busy_poll`]).
    static POLLER: RefCell<Option<Waker>> = const { RefCell::new(None) };
    /// Turns the busy poller has spun (for tests and profiles).
    static SPINS: Cell<u64> = const { Cell::new(0) };
    /// Whether this worker busy polls.
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// A relay step moved bytes: with busy polling on, wakes this worker's
/// poller if it waits. Off, or off the workers, one thread-local read.
pub fn moved() {
    if !BUSY.with(Cell::get) {
        return;
    }
    STEPS.with(|s| s.set(s.get().wrapping_add(1)));
    let poller = POLLER.with(|p| p.borrow_mut().take());
    if let Some(w) = poller {
        w.wake();
    }
}

/// Busy polling (`gateway.busy_poll`), one task per worker. After a relay
/// step moved bytes it keeps the worker polling for `window` more: each
/// turn offers the core to any other runnable thread (`sched_yield`) and
/// then yields to tokio, which polls epoll without blocking (tokio's
/// `yield_now` defers the task until the driver has been polled). The
/// answer to a query forwarded a moment ago is then picked up without the
/// worker sleeping in epoll and the kernel waking it, which on a virtual
/// machine costs tens of microseconds. It stops after `window` without a
/// step and waits for the next one. While it spins the worker never parks,
/// so it releases the [`idle`] waiters itself on each turn.
async fn busy_poll(window: std::time::Duration) {
    let mut seen = STEPS.with(Cell::get);
    loop {
        std::future::poll_fn(|cx| {
            let now = STEPS.with(Cell::get);
            if now == seen {
                let waker = cx.waker().clone();
                // The replaced waker is this task's own: dropping it frees nothing.
                let _old = POLLER.with(|p| p.borrow_mut().replace(waker));
                return Poll::Pending;
            }
            seen = now;
            Poll::Ready(())
        })
        .await;
        let mut since = std::time::Instant::now();
        loop {
            std::thread::yield_now();
            tokio::task::yield_now().await;
            // tokio runs this again once its queue is drained (or at its
            // periodic I/O check), and while it spins the worker never
            // parks: release the teardowns waiting on `idle` here instead.
            release_idle_waiters();
            SPINS.with(|s| s.set(s.get().wrapping_add(1)));
            let now = STEPS.with(Cell::get);
            if now != seen {
                seen = now;
                since = std::time::Instant::now();
            } else if since.elapsed() >= window {
                break;
            }
        }
    }
}

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
    /// Start `n` worker threads (`0`: one per available core), each busy
    /// polling for `busy` after a step (zero: off).
    pub fn start(n: usize, busy: std::time::Duration) -> std::io::Result<Workers> {
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
                    IDLE.with(|idle| *idle.borrow_mut() = Some(IdleWaiters::default()));
                    let inbox = Arc::new(Inbox::new());
                    INBOX.with(|i| *i.borrow_mut() = Some(inbox.clone()));
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .on_thread_park(release_idle_waiters)
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
                    let courier_inbox = inbox.clone();
                    rt.block_on(async move {
                        tokio::spawn(deliver(courier_inbox));
                        if !busy.is_zero() {
                            BUSY.with(|b| b.set(true));
                            tokio::spawn(busy_poll(busy));
                        }
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
                    drop(POLLER.with(|p| p.borrow_mut().take()));
                    // Wakes for tasks that are gone; other threads may still
                    // hold the inbox.
                    let stale = {
                        let mut s = inbox.lock();
                        (std::mem::take(&mut s.wakers), s.courier.take())
                    };
                    drop(stale);
                    drop(INBOX.with(|i| i.borrow_mut().take()));
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

    /// Pending on its first poll, after handing its waker to `f`; ready
    /// on the next.
    async fn pending_once(f: impl FnOnce(&Waker)) {
        let mut f = Some(f);
        std::future::poll_fn(|cx| match f.take() {
            Some(f) => {
                f(cx.waker());
                Poll::Pending
            }
            None => Poll::Ready(()),
        })
        .await
    }

    /// On a worker: keeps it busy for 2 s with a task that yields in a loop
    /// (the worker never parks meanwhile), waits in `after_others` with a
    /// 60 s limit, and says whether that returned while the busy task ran.
    async fn a_lone_end_skips_the_busy_worker() -> bool {
        let busy = tokio::spawn(async {
            let start = std::time::Instant::now();
            while start.elapsed() < Duration::from_secs(2) {
                tokio::task::yield_now().await;
            }
        });
        tokio::task::yield_now().await;
        after_others(Duration::from_secs(60)).await;
        !busy.is_finished()
    }

    #[tokio::test]
    async fn connections_spread_over_the_workers_and_end_when_they_stop() {
        let workers = Workers::start(2, Duration::ZERO).unwrap();
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

    #[tokio::test]
    async fn idle_waits_for_the_worker_to_run_out_of_ready_tasks() {
        // Off the workers it completes at once.
        tokio::time::timeout(Duration::from_secs(5), idle())
            .await
            .unwrap();
        let workers = Workers::start(1, Duration::ZERO).unwrap();
        let handle = workers.workers[0].handle.clone();
        let busy_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done = busy_done.clone();
        handle.spawn(async move {
            // Keeps a task ready on the worker for 200 ms.
            let busy = tokio::spawn(async move {
                let start = std::time::Instant::now();
                while start.elapsed() < Duration::from_millis(200) {
                    tokio::task::yield_now().await;
                }
                done.store(true, Ordering::SeqCst);
            });
            // A waiter whose limit passes while the worker is busy leaves
            // nothing registered behind it.
            let gave_up = tokio::time::timeout(Duration::from_millis(20), idle())
                .await
                .is_err();
            let left = IDLE.with(|i| i.borrow().as_ref().map(|w| w.waiting.len()));
            let busy_after_timeout = !busy.is_finished();
            idle().await;
            let _ = tx.send((gave_up, left, busy_after_timeout, busy.is_finished()));
        });
        let (gave_up, left, busy_after_timeout, finished) =
            tokio::time::timeout(Duration::from_secs(10), rx)
                .await
                .unwrap()
                .unwrap();
        assert!(
            busy_after_timeout,
            "the busy task ended too soon to show anything"
        );
        assert!(gave_up, "the worker was idle while a task was ready");
        assert_eq!(left, Some(0));
        // Released only once nothing else was ready: the busy task is done.
        assert!(busy_done.load(Ordering::SeqCst) && finished);
    }

    #[tokio::test]
    async fn after_others_waits_only_behind_tasks_woken_from_outside() {
        // Off the workers it returns at once.
        tokio::time::timeout(
            Duration::from_secs(5),
            after_others(Duration::from_secs(60)),
        )
        .await
        .unwrap();
        let workers = Workers::start(1, Duration::ZERO).unwrap();
        let handle = workers.workers[0].handle.clone();
        let ran = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        let (spawned_tx, spawned_rx) = std::sync::mpsc::channel::<()>();
        let h = handle.clone();
        let r = ran.clone();
        handle.spawn(async move {
            // A busy worker, but nothing woken from outside: no wait (it
            // would last until the busy task ends, or the limit).
            let alone = a_lone_end_skips_the_busy_worker().await;
            // Ten tasks are woken from another thread while this one holds
            // the worker; they wait in its queue.
            hold_tx.send(()).unwrap();
            spawned_rx.recv().unwrap();
            after_others(Duration::from_secs(60)).await;
            let _ = tx.send((alone, r.load(Ordering::SeqCst)));
        });
        hold_rx.recv().unwrap();
        for _ in 0..10 {
            let r = ran.clone();
            h.spawn(async move {
                r.fetch_add(1, Ordering::SeqCst);
            });
        }
        spawned_tx.send(()).unwrap();
        let (alone, ran_before) = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .unwrap()
            .unwrap();
        assert!(alone, "a lone end waited for the busy worker");
        assert_eq!(ran_before, 10, "returned before the queued tasks ran");
    }

    #[tokio::test]
    async fn wakes_from_another_thread_arrive_in_one_batch_that_starts_a_wave() {
        let workers = Workers::start(1, Duration::ZERO).unwrap();
        let handle = workers.workers[0].handle.clone();
        let (inbox_tx, inbox_rx) = std::sync::mpsc::channel();
        handle.spawn(async move { inbox_tx.send(inbox()).unwrap() });
        let worker_inbox = inbox_rx.recv().unwrap().expect("a worker has an inbox");
        assert!(inbox().is_none(), "only workers have one");

        // 50 tasks on the worker wait; the first to run again waits behind
        // the others (`after_others`) and reports how many ran before it.
        const N: usize = 50;
        let wakers = Arc::new(std::sync::Mutex::new(Vec::new()));
        let ran = Arc::new(AtomicUsize::new(0));
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        for _ in 0..N {
            let (wakers, ran, first_tx) = (wakers.clone(), ran.clone(), first_tx.clone());
            handle.spawn(async move {
                pending_once(|w| wakers.lock().unwrap().push(w.clone())).await;
                if ran.fetch_add(1, Ordering::SeqCst) == 0 {
                    after_others(Duration::from_secs(60)).await;
                    first_tx.send(ran.load(Ordering::SeqCst)).unwrap();
                }
            });
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while wakers.lock().unwrap().len() < N {
            assert!(
                std::time::Instant::now() < deadline,
                "the tasks never waited"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // Hold the worker while all 50 are woken from this thread.
        let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        handle.spawn(async move {
            held_tx.send(()).unwrap();
            release_rx.recv().unwrap();
        });
        held_rx.recv().unwrap();
        for w in wakers.lock().unwrap().iter() {
            worker_inbox.wake(w);
        }
        release_tx.send(()).unwrap();
        let ran_before = tokio::task::spawn_blocking(move || {
            first_rx.recv_timeout(Duration::from_secs(30)).unwrap()
        })
        .await
        .unwrap();
        assert_eq!(ran_before, N, "the first woken went before the others");
        assert_eq!(worker_inbox.batches.load(Ordering::SeqCst), 1, "one batch");

        // The wave is over once its tasks had their turn, even on a worker
        // that never parks (a task yielding in a loop keeps it busy): a
        // lone end after it does not wait for the worker to run dry.
        let (tx, rx) = tokio::sync::oneshot::channel();
        handle.spawn(async move {
            let _ = tx.send(a_lone_end_skips_the_busy_worker().await);
        });
        let alone = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .unwrap()
            .unwrap();
        assert!(
            alone,
            "a lone end after the wave waited for the busy worker"
        );

        // On the worker's own thread a wake does not go through the inbox.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let own = worker_inbox.clone();
        handle.spawn(async move {
            pending_once(|w| own.wake(w)).await;
            let _ = tx.send(());
        });
        tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            worker_inbox.batches.load(Ordering::SeqCst),
            1,
            "a local wake is direct"
        );
    }

    #[tokio::test]
    async fn busy_polling_spins_after_a_step_and_stops_after_its_window() {
        async fn spins_around_a_step(busy: Duration, wait: Duration) -> (u64, u64, u64) {
            let workers = Workers::start(1, busy).unwrap();
            let (tx, rx) = tokio::sync::oneshot::channel();
            workers.workers[0].handle.spawn(async move {
                let spins = || SPINS.with(Cell::get);
                tokio::time::sleep(Duration::from_millis(50)).await;
                let before = spins();
                moved();
                // It spins after the step (waiting lets it run: it yields
                // to the timer too)...
                let deadline = std::time::Instant::now() + wait;
                while spins() == before && std::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let during = spins() - before;
                // ...and stops once its window passes with no step: two
                // reads 100 ms apart agree.
                let mut still = u64::MAX;
                while std::time::Instant::now() < deadline + Duration::from_secs(5) {
                    let a = spins();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if spins() == a {
                        still = 0;
                        break;
                    }
                }
                let _ = tx.send((before, during, still));
            });
            tokio::time::timeout(Duration::from_secs(20), rx)
                .await
                .unwrap()
                .unwrap()
        }
        let (before, during, later) =
            spins_around_a_step(Duration::from_millis(20), Duration::from_secs(5)).await;
        assert_eq!(before, 0, "it spun before any step");
        assert!(during > 0, "no spin within 5 s of a step");
        assert_eq!(later, 0, "it kept spinning for 5 s past its 20 ms window");
        let (_, during, _) = spins_around_a_step(Duration::ZERO, Duration::from_millis(300)).await;
        assert_eq!(during, 0, "off, yet it spun");
    }
}
