//! Micro-batching: concurrent requests are merged into one model forward.
//!
//! Front ends [`Batcher::submit`] an encoded request into a bounded queue (full →
//! [`ServeError::Overloaded`], i.e. HTTP 429 / gRPC RESOURCE_EXHAUSTED). One worker
//! thread takes the oldest request, then keeps taking queued requests for the same
//! model until the merged batch would exceed `max_batch_rows` or `max_wait` has passed
//! since it took the first, runs one forward, and replies to each request with its own
//! rows. A request is always scored by the session it was encoded with, so a reload
//! never mixes models within a request; requests whose caller has gone (timed out) are
//! dropped unscored.

use crate::error::{Result, ServeError};
use crate::metrics::Metrics;
use crate::session::InferenceSession;
use crossbeam_channel::{bounded, RecvTimeoutError, Sender, TrySendError};
use mixrank_data::Batch;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Batching limits.
#[derive(Debug, Clone, Copy)]
pub struct BatcherConfig {
    /// Most rows in one forward (at most the session's `max_batch`).
    pub max_batch_rows: usize,
    /// Longest time the first request of a batch waits for company.
    pub max_wait: Duration,
    /// Requests that may wait in the queue.
    pub queue_capacity: usize,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        BatcherConfig { max_batch_rows: 2048, max_wait: Duration::from_millis(1), queue_capacity: 256 }
    }
}

/// `[task][row]` predictions of one request.
pub type Preds = Vec<Vec<f32>>;

struct Job {
    session: Arc<InferenceSession>,
    batch: Batch,
    reply: oneshot::Sender<Result<Preds>>,
}

/// The queue and its worker thread.
pub struct Batcher {
    tx: Mutex<Option<Sender<Job>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
    capacity: usize,
    gate: Arc<Mutex<()>>,
}

impl Batcher {
    pub fn start(cfg: BatcherConfig, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = bounded::<Job>(cfg.queue_capacity.max(1));
        let gate = Arc::new(Mutex::new(()));
        let worker_gate = gate.clone();
        let worker = std::thread::Builder::new()
            .name("mixrank-batcher".into())
            .spawn(move || {
                let mut pending: Option<Job> = None;
                loop {
                    let first = match pending.take() {
                        Some(j) => j,
                        None => match rx.recv() {
                            Ok(j) => j,
                            Err(_) => break,
                        },
                    };
                    // Held by `pause`: the taken request waits here.
                    drop(worker_gate.lock().unwrap_or_else(|e| e.into_inner()));
                    if first.reply.is_closed() {
                        continue;
                    }
                    let session = first.session.clone();
                    let limit = cfg.max_batch_rows.min(session.max_batch).max(1);
                    let deadline = Instant::now() + cfg.max_wait;
                    let mut rows = first.batch.rows;
                    let mut jobs = vec![first];
                    while rows < limit {
                        let wait = deadline.saturating_duration_since(Instant::now());
                        match rx.recv_timeout(wait) {
                            Ok(j) if j.reply.is_closed() => {}
                            Ok(j) if Arc::ptr_eq(&j.session, &session) && rows + j.batch.rows <= limit => {
                                rows += j.batch.rows;
                                jobs.push(j);
                            }
                            Ok(j) => {
                                pending = Some(j);
                                break;
                            }
                            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
                        }
                    }
                    run(&session, jobs, &metrics);
                }
            })
            .expect("spawning the batcher thread");
        Batcher {
            tx: Mutex::new(Some(tx)),
            worker: Mutex::new(Some(worker)),
            capacity: cfg.queue_capacity.max(1),
            gate,
        }
    }

    /// Queues an encoded request; the receiver yields its predictions.
    pub fn submit(&self, session: Arc<InferenceSession>, batch: Batch) -> Result<oneshot::Receiver<Result<Preds>>> {
        let (reply, rx) = oneshot::channel();
        let tx = self.tx.lock().map_err(|_| ServeError::Internal("batcher lock poisoned".into()))?;
        let Some(tx) = tx.as_ref() else { return Err(ServeError::ShuttingDown) };
        match tx.try_send(Job { session, batch, reply }) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(ServeError::Overloaded { capacity: self.capacity }),
            Err(TrySendError::Disconnected(_)) => Err(ServeError::ShuttingDown),
        }
    }

    /// Stops the worker before its next batch until the guard is dropped (requests
    /// queue up meanwhile): for tests of back-pressure, timeouts and shutdown.
    pub fn pause(&self) -> std::sync::MutexGuard<'_, ()> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Requests waiting in the queue.
    pub fn depth(&self) -> usize {
        self.tx.lock().ok().and_then(|t| t.as_ref().map(Sender::len)).unwrap_or(0)
    }

    /// Stops taking requests, lets the worker finish the queued ones, and joins it.
    pub fn close(&self) {
        if let Ok(mut t) = self.tx.lock() {
            t.take();
        }
        if let Some(h) = self.worker.lock().ok().and_then(|mut w| w.take()) {
            let _ = h.join();
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.close();
    }
}

fn run(session: &InferenceSession, mut jobs: Vec<Job>, metrics: &Metrics) {
    let t = Instant::now();
    let sizes: Vec<usize> = jobs.iter().map(|j| j.batch.rows).collect();
    let merged = if jobs.len() == 1 {
        std::mem::take(&mut jobs[0].batch)
    } else {
        let mut m = std::mem::take(&mut jobs[0].batch);
        for j in &jobs[1..] {
            m.append(&j.batch);
        }
        m
    };
    // The forward runs on a worker of rayon's pool (`rayon::scope` from this thread hands
    // it one and waits): its parallel ops are then split by a worker, which keeps the
    // pool's other workers awake through the forward (`Backend::keep_awake`), instead of
    // this thread handing every op to the pool and waiting, one wake-up per op.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rayon::scope(|_| session.predict(&merged))))
        .unwrap_or_else(|_| Err(ServeError::Internal("the model panicked while scoring".into())));
    metrics.batch_rows.observe(merged.rows as f64);
    metrics.batch_requests.observe(jobs.len() as f64);
    metrics.forward_seconds.observe(t.elapsed().as_secs_f64());
    match result {
        Ok(preds) => {
            let mut start = 0;
            for (j, n) in jobs.into_iter().zip(sizes) {
                let mine = preds.iter().map(|p| p[start..start + n].to_vec()).collect();
                start += n;
                let _ = j.reply.send(Ok(mine));
            }
        }
        Err(e) => {
            let msg = e.to_string();
            for j in jobs {
                let _ = j.reply.send(Err(ServeError::Internal(msg.clone())));
            }
        }
    }
}
