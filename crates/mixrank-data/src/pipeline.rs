//! The input pipeline: units of a split decoded by several threads, reassembled in a
//! deterministic order, passed through a shuffle buffer, cut into batches and queued
//! (bounded) ahead of the consumer.
//!
//! ```text
//! dispatcher ──(unit, tx_i)──► decode workers ──chunks──► per-unit bounded channel i
//!      └────────── rx_i in unit order ──► assembler: shuffle buffer → batches ──► prefetch queue
//! ```
//! Memory is bounded: at most `decode_threads` units are in flight, each with at most
//! `UNIT_QUEUE` decoded chunks waiting, plus the shuffle buffer and the prefetch queue.
//! The output order depends only on the seed and epoch, never on thread timing.

use crate::batch::Batch;
use crate::config::Split;
use crate::encode::{BadRows, Encoder};
use crate::error::Result;
use crate::reader::{decode_unit, plan_units, Unit};
use crossbeam_channel::{bounded, Receiver};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::sync::Arc;
use std::thread::JoinHandle;

/// Decoded chunks a unit may have waiting before its worker blocks.
const UNIT_QUEUE: usize = 4;

/// How to read a split.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    pub batch_size: usize,
    /// Shuffle unit order and rows (training); false keeps file order (evaluation).
    pub shuffle: bool,
    pub shuffle_buffer: usize,
    pub prefetch_batches: usize,
    pub decode_threads: usize,
    /// Epoch number: with `shuffle`, each epoch has its own order.
    pub epoch: u64,
    pub seed: u64,
    /// Stop after this many rows.
    pub max_rows: Option<u64>,
    /// Leave out the first N batches (a resumed run's data cursor). The rows are still
    /// decoded and shuffled exactly as without the skip, so batch N + i is the same
    /// batch either way; only the gather into batches and the hand-off are saved.
    pub skip_batches: u64,
    /// Data-parallel sharded reading: `(rank, ranks)`. The split's units are ordered as
    /// without it (the same on every rank) and this rank reads every `ranks`-th one from
    /// its `rank`-th on, shuffling rows with its own stream; `batch_size` is then this
    /// rank's part of the global batch. `None`: every unit.
    pub shard: Option<(usize, usize)>,
}

impl StreamOptions {
    /// Options from the config's `[data]` section.
    pub fn from_config(cfg: &crate::config::ExperimentConfig, shuffle: bool) -> Self {
        let d = &cfg.data;
        StreamOptions {
            batch_size: d.batch_size,
            shuffle,
            shuffle_buffer: d.shuffle_buffer,
            prefetch_batches: d.prefetch_batches,
            decode_threads: d.decode_threads,
            epoch: 0,
            seed: d.seed,
            max_rows: None,
            skip_batches: 0,
            shard: None,
        }
    }
}

/// A running pipeline; iterate it for batches. Dropping it stops the threads.
pub struct BatchStream {
    rx: Option<Receiver<Result<Batch>>>,
    bad: Arc<BadRows>,
    threads: Vec<JoinHandle<()>>,
    units: usize,
    done: bool,
}

impl BatchStream {
    /// Plans the split's units and starts the threads.
    pub fn start(enc: Arc<Encoder>, split: &Split, opts: StreamOptions) -> Result<BatchStream> {
        let mut units = plan_units(enc.config(), split)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed ^ opts.epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        if opts.shuffle {
            units.shuffle(&mut rng);
        }
        if let Some((rank, ranks)) = opts.shard {
            units = units.into_iter().skip(rank).step_by(ranks.max(1)).collect();
            // Each rank shuffles its rows with its own stream.
            rng = rand::rngs::StdRng::seed_from_u64(
                opts.seed
                    ^ opts.epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                    ^ (rank as u64 + 1).wrapping_mul(0xc2b2_ae3d_27d4_eb4f),
            );
        }
        let n_units = units.len();
        let bad = Arc::new(BadRows::new(enc.config().data.max_bad_rows));
        let threads_n = opts.decode_threads.max(1);
        let (job_tx, job_rx) = bounded::<(Unit, crossbeam_channel::Sender<Result<Batch>>)>(threads_n);
        let (order_tx, order_rx) = bounded::<Receiver<Result<Batch>>>(threads_n);
        let (out_tx, out_rx) = bounded::<Result<Batch>>(opts.prefetch_batches.max(1));
        let mut threads = Vec::new();

        threads.push(std::thread::spawn(move || {
            for unit in units {
                let (tx, rx) = bounded(UNIT_QUEUE);
                if job_tx.send((unit, tx)).is_err() || order_tx.send(rx).is_err() {
                    return;
                }
            }
        }));
        for _ in 0..threads_n {
            let job_rx = job_rx.clone();
            let enc = enc.clone();
            let bad = bad.clone();
            let fraction = split.rows;
            threads.push(std::thread::spawn(move || {
                for (unit, tx) in job_rx {
                    let mut emit = |b: Batch| tx.send(Ok(b)).is_ok();
                    if let Err(e) = decode_unit(&enc, &unit, fraction, &bad, &mut emit) {
                        let _ = tx.send(Err(e));
                    }
                }
            }));
        }
        let assembler = Assembler { opts: opts.clone(), rng, buf: None, emitted_rows: 0, skipped: 0 };
        threads.push(std::thread::spawn(move || assembler.run(order_rx, out_tx)));
        Ok(BatchStream { rx: Some(out_rx), bad, threads, units: n_units, done: false })
    }

    /// Rows skipped as bad so far (under `max_bad_rows`).
    pub fn bad_rows(&self) -> &BadRows {
        &self.bad
    }

    /// Number of units (row groups or text files) in the split.
    pub fn units(&self) -> usize {
        self.units
    }
}

impl Iterator for BatchStream {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.done {
            return None;
        }
        match self.rx.as_ref().and_then(|rx| rx.recv().ok()) {
            Some(Err(e)) => {
                self.done = true;
                Some(Err(e))
            }
            Some(ok) => Some(ok),
            None => {
                self.done = true;
                None
            }
        }
    }
}

impl Drop for BatchStream {
    fn drop(&mut self) {
        // Closing the output makes the assembler stop, which closes the unit channels,
        // which stops the workers and the dispatcher.
        self.rx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Reassembles chunks in unit order, shuffles within a window and cuts batches.
struct Assembler {
    opts: StreamOptions,
    rng: rand::rngs::StdRng,
    buf: Option<Batch>,
    emitted_rows: u64,
    /// Batches left out so far (up to `opts.skip_batches`).
    skipped: u64,
}

impl Assembler {
    fn run(mut self, order_rx: Receiver<Receiver<Result<Batch>>>, out: crossbeam_channel::Sender<Result<Batch>>) {
        let window =
            if self.opts.shuffle { self.opts.shuffle_buffer.max(self.opts.batch_size) } else { self.opts.batch_size };
        for unit_rx in order_rx {
            for chunk in unit_rx {
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = out.send(Err(e));
                        return;
                    }
                };
                match &mut self.buf {
                    None => self.buf = Some(chunk),
                    Some(b) => b.append(&chunk),
                }
                if self.buf.as_ref().is_some_and(|b| b.rows >= window) && !self.flush(&out, false) {
                    return;
                }
            }
        }
        self.flush(&out, true);
    }

    /// Emits full batches from the buffer (all rows when `last`); false when the
    /// consumer is gone or the row budget is spent.
    fn flush(&mut self, out: &crossbeam_channel::Sender<Result<Batch>>, last: bool) -> bool {
        let Some(buf) = self.buf.take() else { return true };
        let bs = self.opts.batch_size;
        let mut idx: Vec<usize> = (0..buf.rows).collect();
        if self.opts.shuffle {
            idx.shuffle(&mut self.rng);
        }
        let full = if last { buf.rows } else { buf.rows / bs * bs };
        for start in (0..full).step_by(bs) {
            let mut end = (start + bs).min(full);
            if let Some(max) = self.opts.max_rows {
                let left = max.saturating_sub(self.emitted_rows) as usize;
                if left == 0 {
                    return false;
                }
                end = end.min(start + left);
            }
            if self.skipped < self.opts.skip_batches {
                self.skipped += 1;
                self.emitted_rows += (end - start) as u64;
                continue;
            }
            let batch = buf.gather(&idx[start..end]);
            self.emitted_rows += batch.rows as u64;
            if out.send(Ok(batch)).is_err() {
                return false;
            }
        }
        if full < buf.rows {
            self.buf = Some(buf.gather(&idx[full..]));
        }
        true
    }
}

/// Reads a whole split into memory (small data: tests, evaluation of small sets).
pub fn read_all(enc: Arc<Encoder>, split: &Split, opts: StreamOptions) -> Result<(Vec<Batch>, u64)> {
    let mut s = BatchStream::start(enc, split, opts)?;
    let mut out = Vec::new();
    for b in s.by_ref() {
        out.push(b?);
    }
    let bad = s.bad_rows().count();
    Ok((out, bad))
}
