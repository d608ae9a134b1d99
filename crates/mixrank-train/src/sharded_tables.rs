//! Embedding tables sharded across the ranks by rows (`[train] embedding_sharding =
//! "rows"`): torchrec's and HugeCTR's row-wise sharding, over the [`Collective`]'s
//! all-to-all.
//!
//! Rank `r` of `N` owns the rows `id ≡ r (mod N)` of every table, stored at local row
//! `id / N` (the modulo spreads hashed ids evenly over the ranks), and the sparse
//! optimizer's state for those rows. The model's own tables become *working tables*:
//! during a step they hold the rows the rank's batch looks up and nothing else. One step:
//! 1. **Lookup** ([`ShardedTables::lookup`]): per table, the sorted unique ids of the
//!    rank's rows; each owner is sent the ids it owns (all-to-all), gathers those rows
//!    from its shard on the backend and sends them back (all-to-all). They fill the
//!    working table in id order, and the batch's ids are replaced by their positions
//!    there — an order-preserving map, so the sparse gradients stay sorted by id.
//! 2. The model's forward and backward run unchanged on the working tables.
//! 3. **Gradients** ([`ShardedTables::exchange_grads`]): each feature's sparse gradient
//!    (positions mapped back to ids) is split by owner and sent (all-to-all); each owner
//!    merges what it receives in rank order — the merge replicated tables apply to
//!    their all-gather, in the same order — and its sparse optimizer updates its rows.
//!
//! Every row therefore takes bit for bit the update it takes with replicated tables
//! (`tests/distributed.rs` compares the checkpoints' bytes).
//!
//! **Per-table placement.** Tables named in `[train] replicated_tables`, or with fewer
//! rows than `replicate_tables_under_rows`, stay *whole* on every rank: each rank is the
//! owner of all their rows (lookups answered locally, local row = id) and sends their
//! gradients to every rank, which merges them in rank order as replicated tables do. A
//! whole table's periodic-checkpoint file holds its `id ≡ r (mod N)` rows, as a sharded
//! one's does, so the layout does not depend on the placement.
//!
//! **Whole tables.** The `best/` and final checkpoints and the end of training need
//! the whole tables on rank 0 (validation does not: it looks its rows up as a step
//! does, `crate::score_ranks`): [`ShardedTables::gather_to_lead`] sends
//! every shard (rows and optimizer state) to rank 0, which puts them in its model and
//! optimizer in place of the working tables until [`ShardedTables::release`]. Those
//! checkpoints are the one-process format. **Periodic checkpoints** (the resume points)
//! are written per shard instead, without gathering: every rank writes its rows and
//! their state ([`ShardedTables::tensors`]) into its own file of the checkpoint
//! (`crate::checkpoint::save_sharded`), and reading one puts the tables back together
//! (`crate::checkpoint::read_verified`), so `eval`, `serve`, `--init` and `--resume` —
//! with any number of ranks, sharded or replicated, or one process — read every
//! checkpoint alike. At the start every rank builds (or loads) the whole model and then
//! keeps its shard; so rank 0 holds every table while it writes `best/`
//! and the final checkpoint, and every rank while it starts.

use crate::data_parallel::{decode_sparse, encode_touched, merge, Touched};
use crate::error::{engine, layer, Result, TrainError};
use crate::optimizers::{Optimizers, Sparse};
use crate::tensors::Tensor;
use crate::wire::{put, Reader};
use mixrank_data::config::model::TrainSection;
use mixrank_data::Batch;
use mixrank_dist::Collective;
use mixrank_engine::{Backend, GatherSpec};
use mixrank_model::Model;
use mixrank_nn::{EmbeddingCollection, EmbeddingCollectionConfig, EmbeddingTable, TableConfig};
use rand::SeedableRng;

/// How many of the ids `0..rows` rank `rank` of `size` owns (`id ≡ rank (mod size)`).
pub fn owned_rows(rows: usize, rank: usize, size: usize) -> usize {
    if rank >= rows {
        0
    } else {
        (rows - rank).div_ceil(size)
    }
}

/// The rows of a `[rows, width]` host array that rank `rank` of `size` owns, in id order.
fn take_owned<T: Copy>(full: &[T], width: usize, rank: usize, size: usize) -> Vec<T> {
    let rows = full.len() / width.max(1);
    (rank..rows).step_by(size).flat_map(|id| full[id * width..(id + 1) * width].iter().copied()).collect()
}

/// Pads a shard's host array to at least one row (a shard owning no row keeps a
/// one-row table nobody reads: the layers refuse empty tables).
fn at_least_one_row<T: Copy + Default>(mut v: Vec<T>, width: usize) -> Vec<T> {
    if v.is_empty() {
        v.resize(width, T::default());
    }
    v
}

/// Rank 0's working tables and the shard's optimizer state while its model and
/// optimizer hold the whole tables.
struct SetAside<B: Backend> {
    working: Vec<EmbeddingTable<B>>,
    sparse: Option<Sparse<B>>,
}

/// This rank's shard of every embedding table and the bookkeeping of the working
/// tables (module docs).
pub struct ShardedTables<B: Backend> {
    rank: usize,
    size: usize,
    /// The rows this rank owns (local row `id / size`), the features' sparse gradients
    /// of those rows after [`ShardedTables::exchange_grads`], for the sparse optimizer.
    shard: EmbeddingCollection<B>,
    /// Per table: rows of the whole table, and of this rank's shard.
    full_rows: Vec<usize>,
    owned: Vec<usize>,
    /// Per table: kept whole on every rank (`replicated_tables`,
    /// `replicate_tables_under_rows`): every rank is its own owner of every row, looks
    /// rows up from itself and sends its gradients to every rank.
    whole: Vec<bool>,
    dims: Vec<usize>,
    /// Per feature: the table it reads.
    feature_table: Vec<usize>,
    /// Per table: the ids of the working table's rows, in order (sorted, unique).
    working: Vec<Vec<u32>>,
    /// Backend scratch for answering lookups (ids asked, rows gathered).
    scratch_ids: B::Ids,
    scratch_rows: B::Buf,
    /// Rank 0 while it holds the whole tables.
    set_aside: Option<SetAside<B>>,
    train: TrainSection,
}

impl<B: Backend> ShardedTables<B> {
    /// Cuts the whole tables of `model` (and the sparse state of `optim`, fresh or
    /// restored from a checkpoint) into this rank's shard; the model keeps empty working
    /// tables. `max_batch` is the global batch (the most rows one merged gradient holds).
    /// `names` are the tables' config names: those `train` keeps whole (by name or by
    /// size) stay whole in every rank's shard.
    pub fn new(
        c: &dyn Collective,
        ops: &B,
        model: &mut dyn Model<B>,
        optim: &mut Optimizers<B>,
        train: &TrainSection,
        names: &[String],
        max_batch: usize,
    ) -> Result<Self> {
        let (rank, size) = (c.rank(), c.size());
        let emb = model
            .embeddings_mut()
            .ok_or_else(|| TrainError::Distributed("sharded embedding tables need a model with tables".into()))?;
        let cfg = emb.config().clone();
        let full_rows: Vec<usize> = cfg.tables.iter().map(|t| t.rows).collect();
        let dims: Vec<usize> = cfg.tables.iter().map(|t| t.dim).collect();
        let whole: Vec<bool> = full_rows
            .iter()
            .enumerate()
            .map(|(t, &rows)| {
                names.get(t).is_some_and(|n| train.replicated_tables.contains(n))
                    || rows < train.replicate_tables_under_rows
            })
            .collect();
        let owned: Vec<usize> =
            full_rows.iter().zip(&whole).map(|(&r, &w)| if w { r } else { owned_rows(r, rank, size) }).collect();
        // This rank's rows of table `t` of a `[rows, width]` host array: all of a whole table.
        fn kept<T: Copy + Default>(whole: bool, full: &[T], width: usize, rank: usize, size: usize) -> Vec<T> {
            if whole {
                full.to_vec()
            } else {
                at_least_one_row(take_owned(full, width, rank, size), width)
            }
        }
        let mine = |t: usize, full: &[f32], width: usize| kept(whole[t], full, width, rank, size);
        let shard_cfg = EmbeddingCollectionConfig {
            tables: cfg.tables.iter().zip(&owned).map(|(t, &o)| TableConfig { rows: o.max(1), ..t.clone() }).collect(),
            features: cfg.features.clone(),
        };
        // The shard's initial values are overwritten below; the generator only fills them.
        let mut shard = shard_cfg
            .init(ops, max_batch, &mut rand::rngs::StdRng::seed_from_u64(0))
            .map_err(layer("the embedding shard"))?;
        for (t, table) in emb.tables().iter().enumerate() {
            let full = table.read_value(ops).map_err(layer("reading an embedding table to shard it"))?;
            let mine = mine(t, &full, table.dim);
            ops.write(&mine, &mut shard.tables_mut()[t].value).map_err(engine("writing the embedding shard"))?;
        }
        let sparse = match &optim.sparse {
            None => None,
            Some(full) => {
                let mut s = Optimizers::new_sparse(train, ops, &shard)?;
                for (t, &dim) in dims.iter().enumerate() {
                    match (full, &mut s) {
                        (Sparse::Adagrad(f), Sparse::Adagrad(o)) => {
                            let acc = f.accumulators(ops, t).map_err(layer("reading row-wise Adagrad state"))?;
                            o.set_accumulators(ops, t, &mine(t, &acc, 1))
                                .map_err(layer("sharding row-wise Adagrad state"))?;
                        }
                        (Sparse::Lazy(f), Sparse::Lazy(o)) => {
                            let (m, v, steps) = f.state(ops, t).map_err(layer("reading lazy Adam state"))?;
                            let (m, v) = (mine(t, &m, dim), mine(t, &v, dim));
                            let steps = kept(whole[t], &steps, 1, rank, size);
                            o.set_state(ops, t, f.steps(), &m, &v, &steps)
                                .map_err(layer("sharding lazy Adam state"))?;
                        }
                        _ => unreachable!("both built from the same [train] section"),
                    }
                }
                Some(s)
            }
        };
        optim.sparse = sparse;
        for t in emb.tables_mut() {
            *t = EmbeddingTable { value: ops.alloc(t.dim).map_err(engine("a working table"))?, rows: 1, dim: t.dim };
        }
        let alloc = engine("lookup scratch");
        Ok(ShardedTables {
            rank,
            size,
            shard,
            working: vec![Vec::new(); full_rows.len()],
            full_rows,
            owned,
            whole,
            dims,
            feature_table: cfg.features.iter().map(|f| f.table).collect(),
            scratch_ids: ops.alloc_ids(1).map_err(&alloc)?,
            scratch_rows: ops.alloc(1).map_err(&alloc)?,
            set_aside: None,
            train: train.clone(),
        })
    }

    /// This rank's rows of every table and their sparse optimizer state as named
    /// tensors, with the whole-model names (`emb.tables.<t>`, `adagrad.acc.emb.tables.<t>`,
    /// …) and `[owned rows, …]` shapes, local row `j` holding id `rank + j·size`: the
    /// contents of its shard file in a checkpoint (`crate::checkpoint::save_sharded`).
    /// A whole table's file holds the same rows a sharded one's does (its replicas are
    /// identical), so the checkpoint's layout does not depend on the placement.
    pub fn tensors(&self, ops: &B, optim: &Optimizers<B>) -> Result<Vec<Tensor>> {
        let mut out = Vec::new();
        for (t, table) in self.shard.tables().iter().enumerate() {
            let (o, dim) = (self.owned[t], self.dims[t]);
            let v = table.read_value(ops).map_err(layer("reading the embedding shard"))?;
            out.push(Tensor::f32(format!("emb.tables.{t}"), vec![o, dim], &v[..o * dim]));
        }
        out.extend(optim.sparse_tensors(ops, &self.shard, &self.owned)?);
        for tensor in &mut out {
            let t: usize = tensor.name.rsplit('.').next().and_then(|x| x.parse().ok()).expect("`….tables.<t>` names");
            if self.whole[t] {
                let rows = self.full_rows[t];
                let width = tensor.data.len() / rows.max(1);
                tensor.data = take_owned(&tensor.data, width, self.rank, self.size);
                tensor.shape[0] = owned_rows(rows, self.rank, self.size);
            }
        }
        Ok(out)
    }

    /// The rank holding row `id` of table `t`: this rank for a whole table.
    fn owner(&self, t: usize, id: u32) -> usize {
        if self.whole[t] {
            self.rank
        } else {
            id as usize % self.size
        }
    }

    /// Row `id` of table `t`'s place in its owner's shard.
    fn local_row(&self, t: usize, id: u32) -> u32 {
        if self.whole[t] {
            id
        } else {
            id / self.size as u32
        }
    }

    /// This rank's shard (its tables hold the rows it owns).
    pub fn shard(&self) -> &EmbeddingCollection<B> {
        &self.shard
    }

    /// The shard with its rows' merged gradients, for the sparse optimizer's step.
    pub fn shard_mut(&mut self) -> &mut EmbeddingCollection<B> {
        &mut self.shard
    }

    /// Rows `local` (local row numbers) of this rank's shard of table `t`, read to the host.
    fn gather(&mut self, ops: &B, t: usize, local: &[u32]) -> Result<Vec<f32>> {
        let (k, dim) = (local.len(), self.dims[t]);
        if k == 0 {
            return Ok(Vec::new());
        }
        let err = engine("answering a lookup from the embedding shard");
        if ops.ids_len(&self.scratch_ids) < k {
            self.scratch_ids = ops.alloc_ids(k.next_power_of_two()).map_err(&err)?;
        }
        if ops.len(&self.scratch_rows) < k * dim {
            self.scratch_rows = ops.alloc((k * dim).next_power_of_two()).map_err(&err)?;
        }
        ops.write_ids(local, &mut self.scratch_ids).map_err(&err)?;
        let table = &self.shard.tables()[t];
        let spec = GatherSpec { batch: k, dim, table_rows: table.rows, out_cols: dim, col_offset: 0 };
        ops.gather_rows(&spec, &self.scratch_ids, &table.value, &mut self.scratch_rows).map_err(&err)?;
        let mut host = vec![0f32; k * dim];
        ops.read(&self.scratch_rows, &mut host).map_err(&err)?;
        Ok(host)
    }

    /// Collective. Fetches the rows `b` (this rank's rows of the step) looks up from
    /// their owners into the model's working tables; returns `b` with every id replaced
    /// by its row in the working table, and the bytes this rank sent to other ranks.
    pub fn lookup(&mut self, c: &dyn Collective, ops: &B, b: &Batch, model: &mut dyn Model<B>) -> Result<(Batch, u64)> {
        let (n, nt) = (self.size, self.full_rows.len());
        for w in &mut self.working {
            w.clear();
        }
        for (f, col) in b.cat.iter().enumerate() {
            let t = self.feature_table[f];
            if let Some(&id) = col.ids.iter().find(|&&id| id as usize >= self.full_rows[t]) {
                return Err(TrainError::Distributed(format!(
                    "feature {f} looks up row {id} of table {t}, which has {} rows",
                    self.full_rows[t]
                )));
            }
            self.working[t].extend_from_slice(&col.ids);
        }
        for w in &mut self.working {
            w.sort_unstable();
            w.dedup();
        }
        // Ask every owner for its ids, table by table: `(count, ids)`.
        let mut ask = vec![Vec::new(); n];
        let mut counts = vec![vec![0usize; nt]; n];
        for (t, w) in self.working.iter().enumerate() {
            for (o, out) in ask.iter_mut().enumerate() {
                let mine: Vec<u32> = w.iter().copied().filter(|&id| self.owner(t, id) == o).collect();
                counts[o][t] = mine.len();
                put(out, &[mine.len() as u32]);
                put(out, &mine);
            }
        }
        let mut sent = others(&ask, self.rank);
        let asked = c.all_to_all_bytes(&ask)?;
        // Answer: the rows asked for, table by table, in the order asked.
        let mut answer = vec![Vec::new(); n];
        for (r, bytes) in asked.iter().enumerate() {
            let mut rd = Reader::new(bytes, r, "lookup requests");
            for t in 0..nt {
                let k = rd.u32s(1)?[0] as usize;
                let ids = rd.u32s(k)?;
                if let Some(&id) =
                    ids.iter().find(|&&id| self.owner(t, id) != self.rank || id as usize >= self.full_rows[t])
                {
                    return Err(TrainError::Distributed(format!(
                        "rank {r} asked rank {} for row {id} of table {t}, which it does not hold",
                        self.rank
                    )));
                }
                let local: Vec<u32> = ids.iter().map(|&id| self.local_row(t, id)).collect();
                let rows = self.gather(ops, t, &local)?;
                put(&mut answer[r], &rows);
            }
            rd.done()?;
        }
        sent += others(&answer, self.rank);
        let answered = c.all_to_all_bytes(&answer)?;
        // Fill the working tables: owner `o`'s rows come table by table in id order.
        let mut readers: Vec<Reader<'_>> =
            answered.iter().enumerate().map(|(o, bytes)| Reader::new(bytes, o, "looked-up rows")).collect();
        let emb = model.embeddings_mut().ok_or_else(|| TrainError::Distributed("the model lost its tables".into()))?;
        for (t, w) in self.working.iter().enumerate() {
            let dim = self.dims[t];
            let mut from: Vec<std::vec::IntoIter<f32>> = Vec::with_capacity(n);
            for (o, rd) in readers.iter_mut().enumerate() {
                from.push(rd.f32s(counts[o][t] * dim)?.into_iter());
            }
            let mut rows = Vec::with_capacity(w.len() * dim);
            for &id in w {
                rows.extend(from[self.owner(t, id)].by_ref().take(dim));
            }
            if w.is_empty() {
                continue;
            }
            let table = &mut emb.tables_mut()[t];
            let err = engine("filling a working table");
            if table.rows < w.len() {
                let rows = w.len().max(2 * table.rows);
                table.value = ops.alloc(rows * dim).map_err(&err)?;
                table.rows = rows;
            }
            ops.write(&rows, &mut table.value).map_err(&err)?;
        }
        for rd in &readers {
            rd.done()?;
        }
        let mut local = b.clone();
        for (f, col) in local.cat.iter_mut().enumerate() {
            let w = &self.working[self.feature_table[f]];
            for id in &mut col.ids {
                *id = w.binary_search(id).expect("every id of the batch is in its table's working set") as u32;
            }
        }
        Ok((local, sent))
    }

    /// Collective. Sends every feature's sparse gradient of the last backward (rows of
    /// the working tables) to the rows' owners and merges what this rank receives into
    /// the shard's gradients; returns the bytes this rank sent to other ranks.
    pub fn exchange_grads(&mut self, c: &dyn Collective, ops: &B, model: &mut dyn Model<B>) -> Result<u64> {
        let n = self.size;
        let emb = model.embeddings().ok_or_else(|| TrainError::Distributed("the model lost its tables".into()))?;
        let nf = self.feature_table.len();
        let read = engine("reading sparse gradients for their owners");
        let mut send = vec![Vec::new(); n];
        let mut dims = Vec::with_capacity(nf);
        for f in 0..nf {
            let g = emb.grad(f);
            dims.push(g.dim);
            let (mut pos, mut rows) = (vec![0u32; g.len], vec![0f32; g.len * g.dim]);
            ops.read_ids(&g.ids, &mut pos).map_err(&read)?;
            ops.read(&g.rows, &mut rows).map_err(&read)?;
            let t = self.feature_table[f];
            let w = &self.working[t];
            let ids: Vec<u32> = pos.iter().map(|&p| w[p as usize]).collect();
            for (o, out) in send.iter_mut().enumerate() {
                // A whole table's rows go to every rank (the all-gather of replicated tables).
                let keep: Vec<usize> = (0..ids.len()).filter(|&i| self.whole[t] || ids[i] as usize % n == o).collect();
                let ids_o: Vec<u32> = keep.iter().map(|&i| ids[i]).collect();
                let rows_o: Vec<f32> =
                    keep.iter().flat_map(|&i| rows[i * g.dim..(i + 1) * g.dim].iter().copied()).collect();
                encode_touched(out, &ids_o, &rows_o);
            }
        }
        let sent = others(&send, self.rank);
        let got = c.all_to_all_bytes(&send)?;
        let per_rank: Vec<Vec<Touched>> =
            got.iter().enumerate().map(|(r, b)| decode_sparse(b, &dims, r)).collect::<Result<_>>()?;
        let write = engine("writing the shard's merged sparse gradients");
        for (f, &dim) in dims.iter().enumerate() {
            let parts: Vec<&Touched> = per_rank.iter().map(|r| &r[f]).collect();
            let m = merge(&parts, dim);
            let t = self.feature_table[f];
            let local: Vec<u32> = m.ids.iter().map(|&id| self.local_row(t, id)).collect();
            let g = self.shard.grad_mut(f);
            let room = ops.ids_len(&g.ids);
            if local.len() > room || m.rows.len() > ops.len(&g.rows) {
                return Err(TrainError::Distributed(format!(
                    "feature {f}: {} touched rows of this rank's shard exceed the gradient's room for {room}",
                    local.len()
                )));
            }
            ops.write_ids(&local, &mut g.ids).map_err(&write)?;
            ops.write(&m.rows, &mut g.rows).map_err(&write)?;
            g.len = local.len();
        }
        Ok(sent)
    }

    /// Collective. Every rank sends its shard (rows and sparse optimizer state, as the
    /// tensors of its periodic-checkpoint file, [`ShardedTables::tensors`]) to rank 0,
    /// which puts them back together as a checkpoint's shard files are
    /// ([`crate::checkpoint::whole_tensors`]) and installs the whole tables in `model` and
    /// their state in `optim` in place of its working tables and the shard's state (set
    /// aside until [`ShardedTables::release`]). The other ranks keep theirs.
    pub fn gather_to_lead(
        &mut self,
        c: &dyn Collective,
        ops: &B,
        model: &mut dyn Model<B>,
        optim: &mut Optimizers<B>,
    ) -> Result<()> {
        if self.set_aside.is_some() {
            return Err(TrainError::Distributed("the whole tables are already on rank 0".into()));
        }
        let bad = |m: String| TrainError::Distributed(format!("gathering the embedding shards on rank 0: {m}"));
        let mut send = vec![Vec::new(); self.size];
        send[0] = crate::tensors::serialize(&self.tensors(ops, optim)?).map_err(bad)?;
        let got = c.all_to_all_bytes(&send)?;
        if self.rank != 0 {
            return Ok(());
        }
        let whole = crate::tensors::serialize(&crate::checkpoint::whole_tensors(&got).map_err(bad)?).map_err(bad)?;
        let file = crate::tensors::TensorFile::parse("the gathered embedding shards", &whole).map_err(bad)?;
        let emb = model.embeddings_mut().ok_or_else(|| TrainError::Distributed("the model lost its tables".into()))?;
        let mut working = Vec::with_capacity(self.full_rows.len());
        for (t, table) in emb.tables_mut().iter_mut().enumerate() {
            let (rows, dim) = (self.full_rows[t], self.dims[t]);
            let values = file.f32(&format!("emb.tables.{t}"), &[rows, dim]).map_err(bad)?;
            let value = ops.upload(&values).map_err(engine("uploading a whole embedding table"))?;
            working.push(std::mem::replace(table, EmbeddingTable { value, rows, dim }));
        }
        let whole_sparse = match &optim.sparse {
            None => None,
            Some(shard) => {
                let steps = match shard {
                    Sparse::Lazy(o) => o.steps(),
                    Sparse::Adagrad(_) => 0,
                };
                let mut s = Optimizers::new_sparse(&self.train, ops, emb)?;
                s.restore(ops, emb, &file, steps).map_err(bad)?;
                Some(s)
            }
        };
        let shard_sparse = std::mem::replace(&mut optim.sparse, whole_sparse);
        self.set_aside = Some(SetAside { working, sparse: shard_sparse });
        Ok(())
    }

    /// Rank 0 after [`ShardedTables::gather_to_lead`]: puts its working tables and the
    /// shard's optimizer state back (the whole tables are dropped; nothing trained
    /// them). A no-op on the other ranks.
    pub fn release(&mut self, model: &mut dyn Model<B>, optim: &mut Optimizers<B>) {
        let Some(SetAside { working, sparse }) = self.set_aside.take() else { return };
        if let Some(emb) = model.embeddings_mut() {
            for (dst, src) in emb.tables_mut().iter_mut().zip(working) {
                *dst = src;
            }
        }
        optim.sparse = sparse;
    }
}

/// Bytes of `send` addressed to ranks other than `rank` (what travels).
fn others(send: &[Vec<u8>], rank: usize) -> u64 {
    send.iter().enumerate().filter(|(r, _)| *r != rank).map(|(_, b)| b.len() as u64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_id_has_one_owner_and_shards_hold_their_counts() {
        for rows in [1, 2, 5, 7, 64, 65] {
            for size in 1..=4 {
                let total: usize = (0..size).map(|r| owned_rows(rows, r, size)).sum();
                assert_eq!(total, rows, "rows {rows} size {size}");
                for r in 0..size {
                    let ids: Vec<usize> = (0..rows).filter(|id| id % size == r).collect();
                    assert_eq!(owned_rows(rows, r, size), ids.len());
                    let full: Vec<u32> = (0..rows as u32).collect();
                    let mine = take_owned(&full, 1, r, size);
                    assert_eq!(mine, ids.iter().map(|&i| i as u32).collect::<Vec<_>>());
                    // Local row `id / size` holds id.
                    assert!(mine.iter().enumerate().all(|(j, &id)| id as usize / size == j));
                }
            }
        }
    }
}
