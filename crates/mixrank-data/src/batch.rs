//! The batch layout handed to the engine: one contiguous buffer per field, so the
//! embedding gather and the dense GEMM read memory in order.

use arrow::array::ArrayRef;

/// Ids of one categorical field for a batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CatColumn {
    /// Embedding-table rows. Single-valued: one per example. Multi-valued: all values
    /// of all examples back to back, delimited by `offsets`.
    pub ids: Vec<u32>,
    /// Multi-valued only: `rows + 1` offsets into `ids` (example `i` owns
    /// `ids[offsets[i]..offsets[i + 1]]`; an empty range pools to zeros).
    pub offsets: Option<Vec<u32>>,
}

/// A batch of examples, laid out for the engine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub rows: usize,
    /// One per categorical feature, in config order.
    pub cat: Vec<CatColumn>,
    /// `[rows, dense_width]` row-major, transforms applied; missing indicators follow
    /// the values (see `ExperimentConfig::dense_width`).
    pub dense: Vec<f32>,
    pub dense_width: usize,
    /// `[n_tasks, rows]`: one contiguous slice per task (transform applied; 0 where
    /// the mask is 0).
    pub labels: Vec<f32>,
    /// `[n_tasks, rows]`: 1.0 where the task's label counts, else 0.0.
    pub label_mask: Vec<f32>,
    /// `[n_tasks, rows]`: teacher scores as logits; NaN for tasks without a teacher.
    pub teacher_logits: Vec<f32>,
    pub n_tasks: usize,
    /// `[rows]` sample weights (1.0 when no weight column is configured).
    pub weights: Vec<f32>,
    /// `[rows]` segment (surface) ids; all 0 when not configured.
    pub segment: Vec<u32>,
    /// `[rows]` device ids; all 0 when not configured.
    pub device: Vec<u32>,
    /// `[rows]` positions (1-based; 0 when not configured).
    pub position: Vec<u32>,
    /// `[rows]` hashed request ids; the row's global index when not configured.
    pub request_id: Vec<u64>,
    /// `[n_keep, rows]` numeric pass-through columns (`columns.keep`).
    pub keep: Vec<f32>,
    pub n_keep: usize,
    /// Source columns carried unchanged, one Arrow array of `rows` cells each (empty
    /// unless the encoder was asked for them: [`crate::Encoder::with_passthrough`]).
    pub passthrough: Vec<ArrayRef>,
}

impl Batch {
    /// An empty batch with the given widths.
    pub fn empty(cat: &[bool], dense_width: usize, n_tasks: usize, n_keep: usize) -> Batch {
        Batch {
            cat: cat.iter().map(|&multi| CatColumn { ids: Vec::new(), offsets: multi.then(|| vec![0]) }).collect(),
            dense_width,
            n_tasks,
            n_keep,
            ..Default::default()
        }
    }

    pub fn label(&self, task: usize) -> &[f32] {
        &self.labels[task * self.rows..(task + 1) * self.rows]
    }

    pub fn mask(&self, task: usize) -> &[f32] {
        &self.label_mask[task * self.rows..(task + 1) * self.rows]
    }

    pub fn teacher(&self, task: usize) -> &[f32] {
        &self.teacher_logits[task * self.rows..(task + 1) * self.rows]
    }

    pub fn kept(&self, k: usize) -> &[f32] {
        &self.keep[k * self.rows..(k + 1) * self.rows]
    }

    /// Appends all rows of `other` (same widths).
    pub fn append(&mut self, other: &Batch) {
        debug_assert_eq!(self.cat.len(), other.cat.len());
        for (a, b) in self.cat.iter_mut().zip(&other.cat) {
            match (&mut a.offsets, &b.offsets) {
                (Some(ao), Some(bo)) => {
                    let base = a.ids.len() as u32;
                    ao.extend(bo[1..].iter().map(|o| o + base));
                }
                (None, None) => {}
                _ => panic!("append: multi-valued layout differs"),
            }
            a.ids.extend_from_slice(&b.ids);
        }
        self.dense.extend_from_slice(&other.dense);
        self.labels = interleave_task_major(&self.labels, self.rows, &other.labels, other.rows, self.n_tasks);
        self.label_mask =
            interleave_task_major(&self.label_mask, self.rows, &other.label_mask, other.rows, self.n_tasks);
        self.teacher_logits =
            interleave_task_major(&self.teacher_logits, self.rows, &other.teacher_logits, other.rows, self.n_tasks);
        self.keep = interleave_task_major(&self.keep, self.rows, &other.keep, other.rows, self.n_keep);
        self.weights.extend_from_slice(&other.weights);
        self.segment.extend_from_slice(&other.segment);
        self.device.extend_from_slice(&other.device);
        self.position.extend_from_slice(&other.position);
        self.request_id.extend_from_slice(&other.request_id);
        debug_assert_eq!(self.passthrough.len(), other.passthrough.len());
        for (a, b) in self.passthrough.iter_mut().zip(&other.passthrough) {
            *a = arrow::compute::concat(&[a.as_ref(), b.as_ref()])
                .expect("pass-through columns have one type in every file (reader::Passthrough::plan)");
        }
        self.rows += other.rows;
    }

    /// A new batch holding rows `idx` of `self`, in that order.
    pub fn gather(&self, idx: &[usize]) -> Batch {
        let n = idx.len();
        let cat = self
            .cat
            .iter()
            .map(|c| match &c.offsets {
                None => CatColumn { ids: idx.iter().map(|&i| c.ids[i]).collect(), offsets: None },
                Some(off) => {
                    let mut ids = Vec::new();
                    let mut offsets = Vec::with_capacity(n + 1);
                    offsets.push(0u32);
                    for &i in idx {
                        ids.extend_from_slice(&c.ids[off[i] as usize..off[i + 1] as usize]);
                        offsets.push(ids.len() as u32);
                    }
                    CatColumn { ids, offsets: Some(offsets) }
                }
            })
            .collect();
        let w = self.dense_width;
        let mut dense = Vec::with_capacity(n * w);
        for &i in idx {
            dense.extend_from_slice(&self.dense[i * w..(i + 1) * w]);
        }
        let per_task = |v: &[f32], k: usize| -> Vec<f32> {
            let mut out = Vec::with_capacity(n * k);
            for t in 0..k {
                let src = &v[t * self.rows..(t + 1) * self.rows];
                out.extend(idx.iter().map(|&i| src[i]));
            }
            out
        };
        Batch {
            rows: n,
            cat,
            dense,
            dense_width: w,
            labels: per_task(&self.labels, self.n_tasks),
            label_mask: per_task(&self.label_mask, self.n_tasks),
            teacher_logits: per_task(&self.teacher_logits, self.n_tasks),
            n_tasks: self.n_tasks,
            weights: idx.iter().map(|&i| self.weights[i]).collect(),
            segment: idx.iter().map(|&i| self.segment[i]).collect(),
            device: idx.iter().map(|&i| self.device[i]).collect(),
            position: idx.iter().map(|&i| self.position[i]).collect(),
            request_id: idx.iter().map(|&i| self.request_id[i]).collect(),
            keep: per_task(&self.keep, self.n_keep),
            n_keep: self.n_keep,
            passthrough: if self.passthrough.is_empty() {
                Vec::new()
            } else {
                let take = arrow::array::UInt64Array::from_iter_values(idx.iter().map(|&i| i as u64));
                self.passthrough
                    .iter()
                    .map(|a| arrow::compute::take(a.as_ref(), &take, None).expect("row indices within the batch"))
                    .collect()
            },
        }
    }
}

/// Concatenates two `[k, rows]` task-major matrices row-block by row-block.
fn interleave_task_major(a: &[f32], a_rows: usize, b: &[f32], b_rows: usize, k: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity((a_rows + b_rows) * k);
    for t in 0..k {
        out.extend_from_slice(&a[t * a_rows..(t + 1) * a_rows]);
        out.extend_from_slice(&b[t * b_rows..(t + 1) * b_rows]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(rows: usize, start: u32) -> Batch {
        let mut b = Batch::empty(&[false, true], 2, 2, 0);
        b.rows = rows;
        for r in 0..rows as u32 {
            let v = start + r;
            b.cat[0].ids.push(v);
            let c = &mut b.cat[1];
            for k in 0..(v % 3) {
                c.ids.push(v * 10 + k);
            }
            c.offsets.as_mut().unwrap().push(c.ids.len() as u32);
            b.dense.extend([v as f32, -(v as f32)]);
            b.weights.push(1.0);
            b.segment.push(v % 2);
            b.device.push(0);
            b.position.push(v);
            b.request_id.push(v as u64);
        }
        for t in 0..2 {
            for r in 0..rows as u32 {
                b.labels.push((start + r + t) as f32);
                b.label_mask.push(1.0);
                b.teacher_logits.push(f32::NAN);
            }
        }
        b
    }

    #[test]
    fn append_then_gather_matches_direct_construction() {
        let mut a = tiny(3, 0);
        a.append(&tiny(4, 3));
        let whole = tiny(7, 0);
        assert_eq!(a.cat, whole.cat);
        assert_eq!(a.labels, whole.labels);
        assert_eq!(a.dense, whole.dense);
        let g = whole.gather(&[5, 0, 2]);
        assert_eq!(g.cat[0].ids, vec![5, 0, 2]);
        assert_eq!(g.cat[1].ids, vec![50, 51, 20, 21]);
        assert_eq!(g.cat[1].offsets, Some(vec![0, 2, 2, 4]));
        assert_eq!(g.label(1), &[6.0, 1.0, 3.0]);
        assert_eq!(g.dense, vec![5.0, -5.0, 0.0, -0.0, 2.0, -2.0]);
    }

    #[test]
    fn passthrough_columns_follow_append_and_gather() {
        use arrow::array::{Array, AsArray, Int64Array, StringArray};
        use arrow::datatypes::Int64Type;
        let with = |rows: usize, start: u32| {
            let mut b = tiny(rows, start);
            let ids: Vec<i64> = (start..start + rows as u32).map(|v| 1000 + v as i64).collect();
            let names: Vec<Option<String>> =
                (start..start + rows as u32).map(|v| (v % 2 == 0).then(|| format!("r{v}"))).collect();
            b.passthrough =
                vec![std::sync::Arc::new(Int64Array::from(ids)), std::sync::Arc::new(StringArray::from(names))];
            b
        };
        let mut a = with(3, 0);
        a.append(&with(4, 3));
        assert_eq!(a.passthrough, with(7, 0).passthrough);
        let g = a.gather(&[5, 0, 3]);
        assert_eq!(g.passthrough[0].as_primitive::<Int64Type>().values().to_vec(), vec![1005, 1000, 1003]);
        let s = g.passthrough[1].as_string::<i32>();
        assert_eq!((s.is_null(0), s.value(1), s.is_null(2)), (true, "r0", true));
        assert!(tiny(2, 0).gather(&[1]).passthrough.is_empty());
    }
}
