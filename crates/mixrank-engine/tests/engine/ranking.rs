//! The ranking losses of distillation (`Backend::pairwise_ranknet`,
//! `Backend::listwise_softmax`): CpuOps and `Counting<CpuOps>` against RefOps bit for bit
//! (all three run `mixrank_engine::loss`'s code in f32, in the same order), the f64
//! reference's gradient against finite differences of its loss, masked rows with NaN
//! teacher scores left out, and the bad calls every backend refuses.

use crate::common::*;
use mixrank_engine::counting::Counting;
use mixrank_engine::*;
use rand::Rng;

/// A batch of `n` rows: student and teacher logits, sample weights, a label mask (every
/// fifth row masked, its teacher score NaN), pairs and groups over the counted rows plus a
/// few through masked rows.
struct Case<T> {
    s: Vec<T>,
    t: Vec<T>,
    w: Vec<T>,
    m: Vec<T>,
    pairs: Vec<u32>,
    offsets: Vec<u32>,
    members: Vec<u32>,
}

fn case<T: Float>(seed: u64, n: usize, k: usize) -> Case<T> {
    let mut g = rng(seed);
    let s = uniform(&mut g, n, -3.0, 3.0);
    let mut t: Vec<T> = uniform(&mut g, n, -3.0, 3.0);
    let w = uniform(&mut g, n, 0.5, 2.0);
    let mut m = vec![T::ONE; n];
    for i in (0..n).step_by(5) {
        m[i] = T::ZERO;
        t[i] = T::from_f64(f64::NAN);
    }
    let mut pairs = Vec::new();
    for i in 0..n as u32 {
        for _ in 0..k {
            let j = g.random_range(0..n as u32);
            if j != i {
                pairs.extend([i, j]);
            }
        }
    }
    // Groups of 1..=5 consecutive rows, in a shuffled order of rows.
    let mut order: Vec<u32> = (0..n as u32).collect();
    for a in (1..n).rev() {
        order.swap(a, g.random_range(0..=a));
    }
    let (mut offsets, mut members) = (vec![0u32], Vec::new());
    while members.len() < n {
        let len = g.random_range(1..=5).min(n - members.len());
        members.extend_from_slice(&order[members.len()..members.len() + len]);
        offsets.push(members.len() as u32);
    }
    Case { s, t, w, m, pairs, offsets, members }
}

impl<T> Case<T> {
    fn input(&self) -> LossInput<'_, Vec<T>> {
        LossInput { pred: &self.s, target: &self.t, weight: Some(&self.w), mask: Some(&self.m), weight_sum: None }
    }
    fn pair_spec(&self, temperature: f32) -> PairSpec {
        PairSpec { rows: self.s.len(), pairs: self.pairs.len() / 2, temperature }
    }
    fn group_spec(&self, temperature: f32) -> GroupSpec {
        GroupSpec { rows: self.s.len(), groups: self.offsets.len() - 1, temperature }
    }
}

/// Both losses on one backend, added into `start` with `write`: (losses, gradients).
fn run<B: Backend>(
    ops: &B,
    c: &Case<f32>,
    temperature: f32,
    start: &[f32],
    write: GradWrite,
) -> ([f32; 2], [Vec<f32>; 2]) {
    let d = Dev::new(ops, c);
    let (mut gp, mut gl) = (ops.upload(start).unwrap(), ops.upload(start).unwrap());
    let [lp, ll] = d.losses(ops, c, temperature, &mut gp, &mut gl, write);
    let read = |g: &B::Buf| {
        let mut h = vec![0f32; start.len()];
        ops.read(g, &mut h).unwrap();
        h
    };
    ([lp, ll], [read(&gp), read(&gl)])
}

/// A case's inputs in a backend's memory.
struct Dev<B: Backend> {
    s: B::Buf,
    t: B::Buf,
    w: B::Buf,
    m: B::Buf,
    pairs: B::Ids,
    offsets: B::Ids,
    members: B::Ids,
}

impl<B: Backend> Dev<B> {
    fn new(ops: &B, c: &Case<f32>) -> Self {
        let up = |v: &[f32]| ops.upload(v).unwrap();
        let ids = |v: &[u32]| ops.upload_ids(v).unwrap();
        Dev {
            s: up(&c.s),
            t: up(&c.t),
            w: up(&c.w),
            m: up(&c.m),
            pairs: ids(&c.pairs),
            offsets: ids(&c.offsets),
            members: ids(&c.members),
        }
    }

    fn input(&self) -> LossInput<'_, B::Buf> {
        LossInput { pred: &self.s, target: &self.t, weight: Some(&self.w), mask: Some(&self.m), weight_sum: None }
    }

    /// Both losses, added into `gp` (pairwise) and `gl` (listwise) with `write`.
    #[allow(clippy::too_many_arguments)]
    fn losses(
        &self,
        ops: &B,
        c: &Case<f32>,
        temperature: f32,
        gp: &mut B::Buf,
        gl: &mut B::Buf,
        write: GradWrite,
    ) -> [f32; 2] {
        let lp = ops.pairwise_ranknet(&c.pair_spec(temperature), &self.pairs, self.input(), gp, write).unwrap();
        let ll = ops
            .listwise_softmax(&c.group_spec(temperature), &self.offsets, &self.members, self.input(), gl, write)
            .unwrap();
        [lp, ll]
    }
}

#[test]
fn cpu_and_counting_match_the_reference_bit_for_bit() {
    for (seed, n, k) in [(1, 1, 3), (2, 7, 1), (3, 40, 4), (4, 257, 8)] {
        let c = case::<f32>(seed, n, k);
        let start = uniform::<f32>(&mut rng(seed + 100), n + 3, -1.0, 1.0);
        for (temperature, write) in [
            (1.0, GradWrite::default()),
            (2.5, GradWrite { scale: 0.7, accumulate: true }),
            (0.3, GradWrite::default()),
        ] {
            let (lr, gr) = run(&RefOps, &c, temperature, &start, write);
            let counting = Counting::new(CpuOps::new());
            for (name, (l, g)) in [
                ("cpu", run(&CpuOps::new(), &c, temperature, &start, write)),
                ("counting", run(&counting, &c, temperature, &start, write)),
            ] {
                assert!(lr.iter().all(|l| l.is_finite()), "masked NaN teacher scores leaked: {lr:?}");
                assert_eq!(l.map(f32::to_bits), lr.map(f32::to_bits), "{name} n={n}: losses");
                assert_same(&format!("{name} n={n} pairwise grad"), &g[0], &gr[0]);
                assert_same(&format!("{name} n={n} listwise grad"), &g[1], &gr[1]);
            }
            // The two losses on inputs already in the backend: two scalars come back,
            // nothing else moves.
            let d = Dev::new(&counting, &c);
            let (mut gp, mut gl) = (counting.upload(&start).unwrap(), counting.upload(&start).unwrap());
            let before = counting.traffic();
            d.losses(&counting, &c, temperature, &mut gp, &mut gl, write);
            let t = counting.traffic() - before;
            assert_eq!((t.allocs, t.uploads, t.readbacks, t.readback_elems), (0, 0, 2, 2));
            // Past `rows` the gradient is untouched.
            assert_eq!(&gr[0][n..], &start[n..]);
            assert_eq!(&gr[1][n..], &start[n..]);
        }
    }
}

/// `L(s)` of one loss in f64 (the gradient it writes thrown away).
fn loss_f64(c: &Case<f64>, s: &[f64], temperature: f32, listwise: bool) -> f64 {
    let mut g = vec![0.0; s.len()];
    let input = LossInput { pred: s, target: &c.t[..], weight: Some(&c.w[..]), mask: Some(&c.m[..]), weight_sum: None };
    if listwise {
        loss::listwise_softmax(&c.group_spec(temperature), &c.offsets, &c.members, input, &mut g, GradWrite::default())
    } else {
        loss::pairwise_ranknet(&c.pair_spec(temperature), &c.pairs, input, &mut g, GradWrite::default())
    }
    .unwrap()
}

/// The f64 reference's gradient, scaled and accumulated into a non-zero buffer, against
/// central differences of its loss (h = 1e-5, tolerance `1e-7·(1 + |g|)` as in
/// `gradcheck.rs`). Masked rows get no gradient.
#[test]
fn gradients_match_finite_differences() {
    let ops = RefOpsF64::new();
    for (seed, n, k) in [(5, 9, 3), (6, 23, 2)] {
        let c = case::<f64>(seed, n, k);
        for temperature in [0.5f32, 1.0, 3.0] {
            for listwise in [false, true] {
                let start: Vec<f64> = uniform(&mut rng(seed), n, -1.0, 1.0);
                let mut grad = start.clone();
                let write = GradWrite { scale: 2.5, accumulate: true };
                let value = if listwise {
                    ops.listwise_softmax(
                        &c.group_spec(temperature),
                        &c.offsets,
                        &c.members,
                        c.input(),
                        &mut grad,
                        write,
                    )
                } else {
                    ops.pairwise_ranknet(&c.pair_spec(temperature), &c.pairs, c.input(), &mut grad, write)
                }
                .unwrap();
                assert!(value.is_finite() && value > 0.0, "listwise {listwise}: {value}");
                let analytic: Vec<f64> = grad.iter().zip(&start).map(|(g, s)| (g - s) / 2.5).collect();
                for i in (0..n).step_by(5) {
                    assert_eq!(analytic[i], 0.0, "masked row {i} got a gradient");
                }
                let h = 1e-5;
                let mut x = c.s.clone();
                for i in 0..n {
                    let orig = x[i];
                    x[i] = orig + h;
                    let plus = loss_f64(&c, &x, temperature, listwise);
                    x[i] = orig - h;
                    let minus = loss_f64(&c, &x, temperature, listwise);
                    x[i] = orig;
                    let numeric = (plus - minus) / (2.0 * h);
                    let tol = 1e-7 * (1.0 + numeric.abs());
                    assert!(
                        (analytic[i] - numeric).abs() <= tol,
                        "listwise {listwise} T={temperature} row {i}: analytic {} vs numeric {numeric}",
                        analytic[i]
                    );
                }
            }
        }
    }
}

/// Hand-checked values: one pair and one group of two, as in the host references.
#[test]
fn hand_checked_values_and_masked_rows() {
    let sig = |z: f64| 1.0 / (1.0 + (-z).exp());
    let ops = RefOpsF64::new();
    // One pair (0, 1), T = 1: d = 1 − 3 = −2, P = σ(2 − 0) = σ(2). Row 2 is masked and
    // NaN; the pair (0, 2) through it is left out.
    let (s, t, w, m) = (vec![1.0, 3.0, 0.5], vec![2.0, 0.0, f64::NAN], vec![1.0, 1.0, 9.0], vec![1.0, 1.0, 0.0]);
    let input = || LossInput { pred: &s, target: &t, weight: Some(&w), mask: Some(&m), weight_sum: None };
    let mut g = vec![0.0; 3];
    let spec = PairSpec { rows: 3, pairs: 2, temperature: 1.0 };
    let l = ops.pairwise_ranknet(&spec, &vec![0, 1, 0, 2], input(), &mut g, GradWrite::default()).unwrap() as f64;
    let want = (1.0 + (-2.0f64).exp()).ln() + 2.0 * sig(2.0);
    assert!((l - want).abs() < 1e-6, "{l} vs {want}");
    assert!((g[0] - (sig(-2.0) - sig(2.0))).abs() < 1e-12 && g[0] + g[1] == 0.0 && g[2] == 0.0, "{g:?}");

    // One group of two: p = softmax([0, ln 3]) = [1/4, 3/4], q = [3/4, 1/4]; the masked
    // row 2 is in the group but left out, and a group of one counted row adds nothing.
    let (s, t) = (vec![0.0, 3f64.ln(), 7.0, 1.0], vec![3f64.ln(), 0.0, f64::NAN, 2.0]);
    let (w, m) = (vec![1.0; 4], vec![1.0, 1.0, 0.0, 1.0]);
    let input = LossInput { pred: &s, target: &t, weight: Some(&w), mask: Some(&m), weight_sum: None };
    let mut g = vec![0.0; 4];
    let spec = GroupSpec { rows: 4, groups: 2, temperature: 1.0 };
    let l = ops.listwise_softmax(&spec, &vec![0, 3, 4], &vec![0, 2, 1, 3], input, &mut g, GradWrite::default());
    let want = -(0.75 * 0.25f64.ln() + 0.25 * 0.75f64.ln());
    assert!((l.unwrap() as f64 - want).abs() < 1e-6);
    assert!((g[0] + 0.5).abs() < 1e-12 && (g[1] - 0.5).abs() < 1e-12 && g[2] == 0.0 && g[3] == 0.0, "{g:?}");

    // Nothing counted: loss 0, an overwritten gradient zeroed, an accumulated one kept.
    let none = vec![0.0; 4];
    let input = LossInput { pred: &s, target: &t, weight: Some(&w), mask: Some(&none), weight_sum: None };
    let mut g = vec![5.0; 4];
    assert_eq!(
        ops.listwise_softmax(&spec, &vec![0, 3, 4], &vec![0, 2, 1, 3], input, &mut g, GradWrite::default()),
        Ok(0.0)
    );
    assert_eq!(g, [0.0; 4]);
    let mut g = vec![5.0; 4];
    let input = LossInput { pred: &s, target: &t, weight: Some(&w), mask: Some(&none), weight_sum: None };
    let write = GradWrite { scale: 1.0, accumulate: true };
    let spec = PairSpec { rows: 4, pairs: 1, temperature: 1.0 };
    assert_eq!(ops.pairwise_ranknet(&spec, &vec![0, 1], input, &mut g, write), Ok(0.0));
    assert_eq!(g, [5.0; 4]);
}

/// The errors of a list of bad calls on one backend.
fn bad_calls<B: Backend>(ops: &B) -> Vec<EngineError> {
    let c = case::<f32>(7, 6, 2);
    let d = Dev::new(ops, &c);
    let w = GradWrite::default();
    let mut g = ops.upload(&[0.0f32; 6]).unwrap();
    let bad_pairs = ops.upload_ids(&[0, 1, 2, 6]).unwrap();
    let ids = |v: &[u32]| ops.upload_ids(v).unwrap();
    let pair_spec = |pairs| PairSpec { rows: 6, pairs, temperature: 1.0 };
    let group_spec = |groups| GroupSpec { rows: 6, groups, temperature: 1.0 };
    let mut errors = vec![
        // A pair naming a row past `rows`; more pairs than the buffer holds.
        ops.pairwise_ranknet(&pair_spec(2), &bad_pairs, d.input(), &mut g, w).unwrap_err(),
        ops.pairwise_ranknet(&pair_spec(3), &bad_pairs, d.input(), &mut g, w).unwrap_err(),
        // Decreasing offsets; a member past `rows`.
        ops.listwise_softmax(&group_spec(2), &ids(&[0, 3, 2]), &ids(&[0, 1, 2]), d.input(), &mut g, w).unwrap_err(),
        ops.listwise_softmax(&group_spec(1), &ids(&[0, 2]), &ids(&[0, 9]), d.input(), &mut g, w).unwrap_err(),
    ];
    // A temperature that is not a positive number.
    for temperature in [0.0, -1.0, f32::NAN] {
        let spec = c.group_spec(temperature);
        errors.push(ops.listwise_softmax(&spec, &d.offsets, &d.members, d.input(), &mut g, w).unwrap_err());
    }
    // A gradient shorter than `rows`.
    let mut short = ops.upload(&[0.0f32; 5]).unwrap();
    errors.push(ops.pairwise_ranknet(&c.pair_spec(1.0), &d.pairs, d.input(), &mut short, w).unwrap_err());
    errors
}

#[test]
fn every_backend_refuses_the_same_bad_calls() {
    let want = bad_calls(&RefOps);
    assert_eq!(bad_calls(&CpuOps::new()), want);
    assert_eq!(bad_calls(&Counting::new(CpuOps::new())), want);
    let temperature =
        EngineError::InvalidArgument { op: "listwise_softmax", reason: "temperature must be a finite number > 0" };
    assert_eq!(
        want[..7],
        [
            EngineError::IdOutOfRange { op: "pairwise_ranknet", id: 6, position: 3, rows: 6 },
            EngineError::BufferTooSmall {
                op: "pairwise_ranknet",
                operand: "pairs",
                shape: vec![3, 2],
                needed: 6,
                len: 4
            },
            EngineError::InvalidOffsets { op: "listwise_softmax", index: 2, reason: "offsets must be non-decreasing" },
            EngineError::IdOutOfRange { op: "listwise_softmax", id: 9, position: 1, rows: 6 },
            temperature.clone(),
            temperature.clone(),
            temperature,
        ]
    );
    assert_eq!(want[7].to_string(), "pairwise_ranknet: grad holds 5 elements but shape [6] needs 6");
}
