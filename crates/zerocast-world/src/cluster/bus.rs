//! The bus thread: a small Tokio runtime of its own running the NATS client (`async-nats`),
//! between the engine's workers and the [`Bridge`]. The workers hand it their tick batches
//! through a bounded queue and a wake-up; it hands them what arrived through their
//! [`Mail`]. Nothing here blocks a worker.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use bytes::Bytes;
use futures_util::stream::SelectAll;
use futures_util::task::AtomicWaker;
use futures_util::{FutureExt, StreamExt};
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, Notify};

use super::bridge::{region_of, Bridge, BridgeCounts, Effect, Route, Sub, Topic};
use super::ClusterConfig;
use crate::core::TickBatch;
use crate::rules::WorldConfig;
use zerocast::Mail;

/// The bus's figures, for the world's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusFigures {
    /// 1 while connected to the NATS server.
    pub connected: u64,
    /// Messages published.
    pub published: u64,
    /// Messages dropped because a queue toward or from the bus was full (the oldest go).
    pub dropped: u64,
    /// Messages not published because the bus was down.
    pub unsent: u64,
    /// What the bridge counted: messages received, refused, bundled, twice; processes,
    /// players, cells and subscriptions.
    pub bridge: BridgeCounts,
}

#[derive(Default)]
struct Figures {
    connected: AtomicU64,
    published: AtomicU64,
    dropped: AtomicU64,
    unsent: AtomicU64,
    /// Stored by the bus thread after each turn of its loop, read by metrics scrapes.
    bridge: Mutex<BridgeCounts>,
}

/// A bounded queue that drops its oldest entry when full, with a wake-up.
struct Queue<T> {
    items: Mutex<VecDeque<T>>,
    cap: usize,
    wake: Notify,
}

impl<T> Queue<T> {
    fn new(cap: usize) -> Self {
        Self {
            items: Mutex::new(VecDeque::new()),
            cap,
            wake: Notify::new(),
        }
    }

    /// Adds `item`; true if the oldest entry had to go.
    fn push(&self, item: T) -> bool {
        let dropped = {
            let mut q = self.items.lock().unwrap_or_else(|e| e.into_inner());
            let full = q.len() >= self.cap;
            if full {
                q.pop_front();
            }
            q.push_back(item);
            full
        };
        self.wake.notify_one();
        dropped
    }

    fn drain(&self) -> VecDeque<T> {
        std::mem::take(&mut *self.items.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// What the world's shards and the bus thread share.
pub(crate) struct Link {
    node: u32,
    to_bus: Queue<Arc<TickBatch>>,
    mail: OnceLock<(Mail, usize)>,
    started: Notify,
    stop: AtomicBool,
    figures: Figures,
}

impl Link {
    /// This process's node id.
    pub(crate) fn node(&self) -> u32 {
        self.node
    }

    /// Called by each shard at its start: the bus thread posts to the shards with `mail`.
    pub(crate) fn started(&self, mail: &Mail, workers: usize) {
        if self.mail.set((mail.clone(), workers)).is_ok() {
            self.started.notify_one();
        }
    }

    /// A shard's tick batch, for the other processes.
    pub(crate) fn publish(&self, batch: Arc<TickBatch>) {
        if self.to_bus.push(batch) {
            self.figures.dropped.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn figures(&self) -> BusFigures {
        let f = &self.figures;
        let g = |a: &AtomicU64| a.load(Relaxed);
        BusFigures {
            connected: g(&f.connected),
            published: g(&f.published),
            dropped: g(&f.dropped),
            unsent: g(&f.unsent),
            bridge: *f.bridge.lock().unwrap_or_else(PoisonError::into_inner),
        }
    }
}

/// A world process's membership of a cluster: the bus thread. Give it to
/// [`World::clustered`](crate::World::clustered); dropping it (or [`shutdown`](Self::shutdown))
/// says goodbye to the other processes and stops the thread.
pub struct Cluster {
    link: Arc<Link>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Closed when the bus thread ends.
    done: std::sync::mpsc::Receiver<()>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cluster {{ node: {:08x} }}", self.link.node)
    }
}

impl Cluster {
    /// Starts the bus thread for a world with `world`'s rules. It connects in the
    /// background: a bus that cannot be reached now is retried (and logged) while the world
    /// runs without it.
    ///
    /// # Errors
    /// Invalid settings ([`ClusterConfig::check`]) or URL, or no thread.
    pub fn start(config: ClusterConfig, world: &WorldConfig) -> io::Result<Self> {
        config
            .check()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let node = config.node.unwrap_or_else(random_node);
        let link = Arc::new(Link {
            node,
            to_bus: Queue::new(config.queue),
            mail: OnceLock::new(),
            started: Notify::new(),
            stop: AtomicBool::new(false),
            figures: Figures::default(),
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (done_tx, done) = std::sync::mpsc::channel::<()>();
        let cell_size = world.cell_size;
        // What arrives is handed to the shards this often: they use it at their ticks, and
        // a wake-up per message would cost them more than the message.
        let post_every = (world.tick / 5).max(Duration::from_millis(1));
        let thread = {
            let link = link.clone();
            std::thread::Builder::new()
                .name("zerocast-bus".into())
                .spawn(move || {
                    // Dropped (the channel closed) however this thread ends.
                    let _done = done_tx;
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    rt.block_on(run(link, config, cell_size, post_every, ready_tx));
                })?
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self {
                link,
                thread: Some(thread),
                done,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(io::Error::other("the bus thread ended at start"))
            }
        }
    }

    /// This process's node id (the high 32 bits of its players' ids).
    pub fn node(&self) -> u32 {
        self.link.node
    }

    /// The bus's figures now.
    pub fn figures(&self) -> BusFigures {
        self.link.figures()
    }

    pub(crate) fn link(&self) -> Arc<Link> {
        self.link.clone()
    }

    /// Says goodbye to the other processes (they forget this one's players at once) and
    /// stops the bus thread, waiting at most a second for the goodbye to go out. A thread
    /// still waiting on an unreachable bus after three seconds is left behind (the process is
    /// exiting), with a warning: shutting down never hangs on the bus.
    pub fn shutdown(&mut self) {
        self.link.stop.store(true, Relaxed);
        self.link.to_bus.wake.notify_one();
        self.link.started.notify_one();
        let Some(t) = self.thread.take() else {
            return;
        };
        match self.done.recv_timeout(Duration::from_secs(3)) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                tracing::warn!("the bus thread did not stop within 3 s (the bus is unreachable)");
            }
            _ => {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A nonzero node id from the standard library's random hasher keys, the time and the
/// process id (no extra dependency for 32 random bits).
fn random_node() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    let v = h.finish();
    ((v ^ (v >> 32)) as u32).max(1)
}

/// A topic's subject: a cell's names its region first, so that one wildcard covers a region.
fn subject(world: &str, topic: Topic) -> String {
    match topic {
        Topic::Cell(c) => {
            let (rx, ry) = region_of(c);
            format!("zerocast.{world}.cell.{rx}.{ry}.{}.{}", c.0, c.1)
        }
        Topic::Zone((x, y)) => format!("zerocast.{world}.zone.{x}.{y}"),
        Topic::Global => format!("zerocast.{world}.global"),
        Topic::Control => format!("zerocast.{world}.control"),
    }
}

/// What a subscription listens to.
fn pattern(world: &str, sub: Sub) -> String {
    match sub {
        Sub::Cell(c) => subject(world, Topic::Cell(c)),
        Sub::Region((rx, ry)) => format!("zerocast.{world}.cell.{rx}.{ry}.*.*"),
        Sub::Zone(z) => subject(world, Topic::Zone(z)),
    }
}

/// Messages a subscription holds before the client drops what arrives (counted): a cell or
/// region gets a few messages per tick, so this is seconds of them; older news is worse than
/// none, and a thousand subscriptions must not hold a thousand big queues.
const SUBSCRIPTION_QUEUE: usize = 256;

/// Back-off before attempt `attempts` (2 and up: after a failure): 100 ms doubling to 5 s.
fn backoff(attempts: usize) -> Duration {
    let exp = attempts.saturating_sub(2).min(6) as u32;
    Duration::from_millis(100u64 << exp).min(Duration::from_secs(5))
}

async fn run(
    link: Arc<Link>,
    config: ClusterConfig,
    cell_size: f32,
    post_every: Duration,
    ready: std::sync::mpsc::Sender<io::Result<()>>,
) {
    let node = link.node;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let warned = Arc::new(AtomicBool::new(false));
    let url = config.url.clone();
    let options = {
        let warned = warned.clone();
        async_nats::ConnectOptions::new()
            .name(format!("zerocast-world {node:08x}"))
            .no_echo()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .client_capacity(config.queue.max(64))
            .subscription_capacity(SUBSCRIPTION_QUEUE)
            .reconnect_delay_callback(move |attempts| {
                // The client counts the attempt it is about to make: 1 is the first try of a
                // (re)connection, not a failure.
                if attempts <= 1 {
                    return Duration::ZERO;
                }
                if !warned.swap(true, Relaxed) {
                    tracing::warn!(
                        url = %url,
                        "the bus is unreachable: local play goes on; reconnecting with back-off"
                    );
                }
                backoff(attempts)
            })
            .event_callback(move |e| {
                let tx = events_tx.clone();
                async move {
                    let _ = tx.send(e);
                }
            })
    };
    let client = match options.connect(config.url.as_str()).await {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot use the bus at {}: {e}", config.url),
            )));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    tracing::info!(node = format!("{node:08x}"), world = %config.world, url = %config.url, "joining the world's cluster");
    // The shards start after the engine is built: wait for their mail.
    let (mail, workers) = loop {
        if let Some(m) = link.mail.get() {
            break m.clone();
        }
        if link.stop.load(Relaxed) {
            return;
        }
        link.started.notified().await;
    };
    let mut bridge = Bridge::new(node, workers, cell_size, config.timeout);
    // Every subscription's messages, polled together (no task or channel of ours per
    // subscription: a message costs the NATS client's channel only).
    let mut feeds: SelectAll<Feed> = SelectAll::new();
    let out = Arc::new(Queue::<(Topic, Bytes)>::new(config.queue));
    let publisher = tokio::spawn(publish_loop(
        client.clone(),
        out.clone(),
        link.clone(),
        config.world.clone(),
    ));
    let mut subs: FxHashMap<Sub, Arc<Stop>> = FxHashMap::default();
    for (topic, route) in [
        (Topic::Control, Route::Control),
        (Topic::Global, Route::Global),
    ] {
        let subject = subject(&config.world, topic);
        if let Some((feed, _)) = subscribe(&client, subject, route).await {
            feeds.push(feed);
        }
    }
    let mut post = tokio::time::interval(post_every);
    post.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heartbeat = tokio::time::interval(config.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut effects = Vec::new();
    let mut was_connected = false;
    loop {
        tokio::select! {
            () = link.to_bus.wake.notified() => {
                for b in link.to_bus.drain() {
                    bridge.local(b, &mut effects);
                }
            }
            Some((route, bytes)) = feeds.next() => {
                let now = Instant::now();
                bridge.remote(route, &bytes, now, &mut effects);
                // Take what else is ready in one go.
                for _ in 0..4096 {
                    match feeds.next().now_or_never() {
                        Some(Some((route, bytes))) => {
                            bridge.remote(route, &bytes, now, &mut effects);
                        }
                        _ => break,
                    }
                }
            }
            _ = post.tick() => {
                if let Some(batch) = bridge.take() {
                    let batch = Arc::new(batch);
                    for w in 0..workers {
                        mail.post(w, Box::new(batch.clone()));
                    }
                }
            }
            _ = heartbeat.tick() => bridge.heartbeat(Instant::now(), &mut effects),
            Some(event) = events.recv() => match event {
                async_nats::Event::Connected => {
                    warned.store(false, Relaxed);
                    tracing::info!(url = %config.url, "connected to the bus");
                    bridge.reconnected(&mut effects);
                }
                async_nats::Event::Disconnected => {
                    if was_connected {
                        tracing::warn!(url = %config.url, "lost the bus: local play goes on; reconnecting");
                    }
                }
                async_nats::Event::SlowConsumer(_) => {
                    // The client dropped messages of a subscription this loop did not read
                    // fast enough.
                    link.figures.dropped.fetch_add(1, Relaxed);
                }
                other => tracing::debug!(event = %other, "bus event"),
            },
        }
        let connected = client.connection_state() == State::Connected;
        was_connected = connected;
        link.figures.connected.store(u64::from(connected), Relaxed);
        for e in effects.drain(..) {
            match e {
                Effect::Publish(topic, bytes) => {
                    if out.push((topic, bytes)) {
                        link.figures.dropped.fetch_add(1, Relaxed);
                    }
                }
                Effect::Subscribe(sub) => {
                    let subject = pattern(&config.world, sub);
                    if let Some((feed, stop)) = subscribe(&client, subject, Route::Cells).await {
                        feeds.push(feed);
                        if let Some(old) = subs.insert(sub, stop) {
                            old.stop();
                        }
                    }
                }
                Effect::Unsubscribe(sub) => {
                    if let Some(stop) = subs.remove(&sub) {
                        stop.stop();
                    }
                }
                Effect::Note(line) => tracing::info!("{line}"),
            }
        }
        *link
            .figures
            .bridge
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = bridge.counts();
        if link.stop.load(Relaxed) {
            break;
        }
    }
    // Goodbye: the others forget this process's players now rather than at the timeout.
    if let Effect::Publish(topic, bytes) = bridge.bye() {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = client.publish(subject(&config.world, topic), bytes).await;
            let _ = client.flush().await;
        })
        .await;
    }
    publisher.abort();
}

/// Ends a [`Feed`] from outside: it yields `None` at its next poll (woken now), and
/// dropping its subscriber unsubscribes.
struct Stop {
    flag: AtomicBool,
    waker: AtomicWaker,
}

impl Stop {
    fn stop(&self) {
        self.flag.store(true, Relaxed);
        self.waker.wake();
    }
}

/// A subscription's messages, tagged with their route, until stopped.
struct Feed {
    sub: async_nats::Subscriber,
    route: Route,
    stop: Arc<Stop>,
}

impl futures_util::Stream for Feed {
    type Item = (Route, Bytes);

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.stop.flag.load(Relaxed) {
            return std::task::Poll::Ready(None);
        }
        match this.sub.poll_next_unpin(cx) {
            std::task::Poll::Ready(m) => std::task::Poll::Ready(m.map(|m| (this.route, m.payload))),
            std::task::Poll::Pending => {
                // Registered only when waiting, then checked again: a stop between the first
                // check and the registration is not missed.
                this.stop.waker.register(cx.waker());
                if this.stop.flag.load(Relaxed) {
                    return std::task::Poll::Ready(None);
                }
                std::task::Poll::Pending
            }
        }
    }
}

/// Subscribes to `subject`: its feed, and the handle that ends it.
async fn subscribe(
    client: &async_nats::Client,
    subject: String,
    route: Route,
) -> Option<(Feed, Arc<Stop>)> {
    let sub = match client.subscribe(subject.clone()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(subject, error = %e, "cannot subscribe");
            return None;
        }
    };
    let stop = Arc::new(Stop {
        flag: AtomicBool::new(false),
        waker: AtomicWaker::new(),
    });
    Some((
        Feed {
            sub,
            route,
            stop: stop.clone(),
        },
        stop,
    ))
}

/// Publishes what the bridge queued, in order; while the bus is down nothing is buffered
/// (it would be stale when the bus returns): it is counted as unsent.
async fn publish_loop(
    client: async_nats::Client,
    out: Arc<Queue<(Topic, Bytes)>>,
    link: Arc<Link>,
    world: String,
) {
    loop {
        out.wake.notified().await;
        for (topic, bytes) in out.drain() {
            if client.connection_state() != State::Connected {
                link.figures.unsent.fetch_add(1, Relaxed);
                continue;
            }
            match client.publish(subject(&world, topic), bytes).await {
                Ok(()) => link.figures.published.fetch_add(1, Relaxed),
                Err(_) => link.figures.unsent.fetch_add(1, Relaxed),
            };
        }
    }
}
