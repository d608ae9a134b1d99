//! FinalMLP pieces: gradient checks, CpuOps vs RefOps, errors.

use crate::common::*;
use crate::dense::check_layer;
use mixrank_engine::{Activation, RefOps};
use mixrank_nn::testing::RefOpsF64;
use mixrank_nn::*;

#[test]
fn bilinear_fusion_gradients() {
    let ops = RefOpsF64::new();
    for (i, &(d_x, d_y, heads, d_out, batch)) in
        [(4, 6, 2, 1, 3), (3, 3, 1, 2, 1), (6, 4, 2, 3, 2), (1, 5, 1, 1, 2)].iter().enumerate()
    {
        let mut f = BilinearFusionConfig::new(d_x, d_y, heads, d_out).init(&ops, batch, &mut rng(i as u64)).unwrap();
        randomize(&mut f, &mut rng(10 + i as u64), -1.0, 1.0);
        let mut g = rng(20 + i as u64);
        let inputs = vec![uniform64(&mut g, batch * d_x, -1.0, 1.0), uniform64(&mut g, batch * d_y, -1.0, 1.0)];
        check_grads(
            &format!("BilinearFusion {d_x}x{d_y} h{heads} o{d_out} b{batch}"),
            &mut f,
            &inputs,
            |f, x| f.forward(&ops, &x[0], &x[1], batch).unwrap()[..batch * d_out].to_vec(),
            |f, x, r| {
                f.forward(&ops, &x[0], &x[1], batch).unwrap();
                f.backward(&ops, &x[0], &x[1], &r.to_vec()).unwrap();
                vec![f.d_x()[..batch * d_x].to_vec(), f.d_y()[..batch * d_y].to_vec()]
            },
            i as u64,
        );
    }
}

#[test]
fn bilinear_fusion_matches_formula() {
    // One head, d_out 1: out = w_xᵀx + b + w_yᵀy + xᵀ W y.
    let ops = RefOpsF64::new();
    let mut f = BilinearFusionConfig::new(2, 2, 1, 1).init(&ops, 1, &mut rng(0)).unwrap();
    f.params(&mut |name, p| match name {
        "w_x.weight" => p.value.copy_from_slice(&[1.0, 2.0]),
        "w_x.bias" => p.value.copy_from_slice(&[0.5]),
        "w_y.weight" => p.value.copy_from_slice(&[-1.0, 3.0]),
        "w_xy" => p.value.copy_from_slice(&[1.0, 2.0, 3.0, 4.0]),
        other => panic!("unexpected {other}"),
    });
    let out = f.forward(&ops, &vec![1.0, -1.0], &vec![2.0, 1.0], 1).unwrap();
    // lin: 1 - 2 + 0.5 - 2 + 3 = 0.5; xᵀWy = [1,-1]·[[1,2],[3,4]]·[2,1] = [-2,-2]·[2,1] = -6
    assert_eq!(out[0], 0.5 - 6.0);
}

#[test]
fn bilinear_fusion_sees_weights_changed_between_forwards_in_both_modes() {
    // The layer keeps reordered copies of w_xy (one per mode); a parameter visit must
    // refresh them, and both modes compute the same function.
    let ops = mixrank_engine::CpuOps::new();
    let (d_x, d_y, heads, d_out, batch) = (4, 6, 2, 3, 5);
    let mut g = rng(8);
    let (x, y) = (uniform32(&mut g, batch * d_x, -1.0, 1.0), uniform32(&mut g, batch * d_y, -1.0, 1.0));
    let mut outputs = Vec::new();
    for training in [true, false] {
        let mut f = BilinearFusionConfig::new(d_x, d_y, heads, d_out).init(&ops, batch, &mut rng(1)).unwrap();
        f.set_training(training);
        let before = f.forward(&ops, &x, &y, batch).unwrap()[..batch * d_out].to_vec();
        f.params(&mut |name, p| {
            if name == "w_xy" {
                p.value.iter_mut().for_each(|v| *v = -2.0 * *v + 0.25);
            }
        });
        let after = f.forward(&ops, &x, &y, batch).unwrap()[..batch * d_out].to_vec();
        let mut values = Vec::new();
        f.params(&mut |_, p| values.push(p.value.clone()));
        let mut fresh = BilinearFusionConfig::new(d_x, d_y, heads, d_out).init(&ops, batch, &mut rng(2)).unwrap();
        fresh.set_training(training);
        let mut i = 0;
        fresh.params(&mut |_, p| {
            p.value.copy_from_slice(&values[i]);
            i += 1;
        });
        let want = fresh.forward(&ops, &x, &y, batch).unwrap()[..batch * d_out].to_vec();
        assert_ne!(before, after, "training = {training}");
        assert_eq!(after, want, "training = {training}");
        outputs.push(after);
    }
    let scale = outputs[0].iter().fold(0f32, |m, v| m.max(v.abs()));
    for (a, b) in outputs[0].iter().zip(&outputs[1]) {
        assert!((a - b).abs() <= 1e-5 * scale, "training {a} vs evaluation {b}");
    }
}

/// A "reduced" GEMM that is exact (f64 accumulation of the f32 weight the site hands
/// over), so the reduced path's reordering `(x_h ⊗ y_h) · W'_h` is checked on its own.
struct ExactGemm {
    w: Vec<f32>,
    k: usize,
    n: usize,
}

impl ReducedGemm<mixrank_engine::CpuOps> for ExactGemm {
    fn gemm(&mut self, batch: usize, input: &Vec<f32>, out: &mut Vec<f32>) -> mixrank_engine::Result<()> {
        for b in 0..batch {
            for o in 0..self.n {
                let s: f64 = (0..self.k).map(|i| input[b * self.k + i] as f64 * self.w[i * self.n + o] as f64).sum();
                out[b * self.n + o] = s as f32;
            }
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        "exact"
    }
}

/// HostBf16 through the trait's default `gemm_outer` (outer product in f32 first).
struct ViaF32(HostBf16);

impl ReducedGemm<mixrank_engine::CpuOps> for ViaF32 {
    fn gemm(&mut self, batch: usize, input: &Vec<f32>, out: &mut Vec<f32>) -> mixrank_engine::Result<()> {
        ReducedGemm::<mixrank_engine::CpuOps>::gemm(&mut self.0, batch, input, out)
    }

    fn name(&self) -> &'static str {
        "via-f32"
    }
}

#[test]
fn bilinear_fusion_reduced_path_reorders_exactly_and_bf16_tracks_f32() {
    use mixrank_engine::bf16::Bf16Kernel;
    let ops = mixrank_engine::CpuOps::new();
    let (d_x, d_y, heads, d_out, batch) = (6, 4, 2, 5, 7);
    let make = || {
        let mut f = BilinearFusionConfig::new(d_x, d_y, heads, d_out).init(&ops, batch, &mut rng(3)).unwrap();
        let mut g = rng(4);
        f.params(&mut |_, p| {
            let n = p.value.len();
            p.value.copy_from_slice(&uniform32(&mut g, n, -1.0, 1.0));
        });
        f
    };
    let mut g = rng(5);
    let (x, y) = (uniform32(&mut g, batch * d_x, -1.0, 1.0), uniform32(&mut g, batch * d_y, -1.0, 1.0));
    let want = make().forward(&ops, &x, &y, batch).unwrap()[..batch * d_out].to_vec();
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));

    // Exact GEMMs behind every site: only the summation order differs from f32.
    let mut exact = make();
    let mut layouts = Vec::new();
    exact.visit_reduced(&mut |site| {
        layouts.push(site.layout);
        let w = site.dense_weight().into_owned();
        *site.slot = Some(Box::new(ExactGemm { w, k: site.k, n: site.n }));
    });
    let (hx, hy) = (d_x / heads, d_y / heads);
    assert_eq!(
        layouts,
        vec![
            WeightLayout::Dense,
            WeightLayout::Dense,
            WeightLayout::BilinearHead { head: 0, hx, hy },
            WeightLayout::BilinearHead { head: 1, hx, hy }
        ]
    );
    let got = exact.forward(&ops, &x, &y, batch).unwrap();
    for (i, (a, b)) in want.iter().zip(&got[..batch * d_out]).enumerate() {
        assert!((a - b).abs() <= 1e-5 * scale, "row {} out {}: f32 {a} vs reordered {b}", i / d_out, i % d_out);
    }
    let e = exact.backward(&ops, &x, &y, &vec![1.0; batch * d_out]).err().unwrap().to_string();
    assert!(e.contains("inference only"), "{e}");

    // bf16 behind every site: close to f32, not equal; and HostBf16's direct bf16 outer
    // products give exactly what the f32 outer product plus its GEMM gives.
    for kernel in
        [Some(Bf16Kernel::detect()), Some(Bf16Kernel::portable()), Bf16Kernel::widen().ok()].into_iter().flatten()
    {
        let mut via_f32 = make();
        via_f32.visit_reduced(&mut |site| {
            let r = HostBf16::new(kernel, site.k, site.n, &site.dense_weight(), site.max_batch).unwrap();
            *site.slot = Some(Box::new(ViaF32(r)));
        });
        let plain = via_f32.forward(&ops, &x, &y, batch).unwrap()[..batch * d_out].to_vec();
        let mut f = make();
        f.visit_reduced(&mut |site| {
            let r = HostBf16::new(kernel, site.k, site.n, &site.dense_weight(), site.max_batch).unwrap();
            *site.slot = Some(Box::new(r));
        });
        let got = f.forward(&ops, &x, &y, batch).unwrap();
        assert_eq!(&got[..batch * d_out], &plain[..], "{}", kernel.name());
        let max = want.iter().zip(&got[..batch * d_out]).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        // bf16 rounds each operand to 8 significant bits: ~2^-8 relative per product.
        assert!(max > 0.0 && max < 0.02 * scale, "{}: max |Δ| {max} (scale {scale})", kernel.name());
    }
}

fn final_cfg(context: GateContext, d_in: usize, dropout: f32) -> FinalMlpConfig {
    FinalMlpConfig {
        d_in,
        mlp1: MlpConfig::new(d_in, &[6, 4]).with_activation(Activation::Tanh).with_dropout(dropout),
        mlp2: MlpConfig::new(d_in, &[6]).with_activation(Activation::GeluTanh),
        gate_hidden: vec![3],
        context,
        heads: 2,
        d_out: 1,
    }
}

#[test]
fn final_mlp_gradients() {
    let ops = RefOpsF64::new();
    let contexts = [GateContext::Input, GateContext::Learned { d: 3 }, GateContext::Columns { start: 1, len: 3 }];
    for (i, context) in contexts.into_iter().enumerate() {
        for (batch, dropout) in [(1, 0.0), (3, 0.25)] {
            let mut cfg = final_cfg(context, 5, dropout);
            cfg.gate_hidden = vec![4];
            cfg.mlp1.hidden = vec![6, 4];
            cfg.d_out = 2;
            let mut net = cfg.init(&ops, batch, &mut rng(i as u64)).unwrap();
            randomize(&mut net, &mut rng(30 + i as u64), -1.0, 1.0);
            check_layer(&format!("FinalMlp {context:?} b{batch}"), &mut net, batch, i as u64, |m| {
                m.set_dropout_step(0)
            });
        }
    }
}

#[test]
fn cpu_and_reference_within_rounding_bound() {
    // Smooth stream activations: with a learned context every row shares the gate MLP's
    // ReLU pre-activations, so one unit within its rounding bound of the kink would make
    // the (correct) bound loose for all rows at once.
    for (seed, context) in
        [(1, GateContext::Input), (2, GateContext::Learned { d: 8 }), (3, GateContext::Columns { start: 8, len: 10 })]
    {
        let cfg = FinalMlpConfig {
            d_in: 24,
            mlp1: MlpConfig::new(24, &[16]).with_activation(Activation::GeluTanh).with_dropout(0.1),
            mlp2: MlpConfig::new(24, &[8]).with_activation(Activation::Silu),
            gate_hidden: vec![8],
            context,
            heads: 4,
            d_out: 1,
        };
        compare_backends(&format!("FinalMlp {context:?}"), &cfg, 9, seed, unit_range);
    }
}

#[test]
fn final_mlp_config_errors() {
    let ops = RefOps;
    let mut cfg = final_cfg(GateContext::Input, 5, 0.0);
    cfg.mlp2.d_in = 4;
    let err = cfg.init(&ops, 2, &mut rng(0)).err().unwrap();
    assert_eq!(err, NnError::DimMismatch { layer: "FinalMlp", lhs: "mlp2.d_in", lhs_dim: 4, rhs: "d_in", rhs_dim: 5 });
    let err = final_cfg(GateContext::Columns { start: 3, len: 3 }, 5, 0.0).init(&ops, 2, &mut rng(0)).err().unwrap();
    assert!(matches!(err, NnError::DimMismatch { layer: "FinalMlp", lhs_dim: 6, rhs_dim: 5, .. }), "{err}");
    let mut cfg = final_cfg(GateContext::Input, 5, 0.0);
    cfg.heads = 3;
    let err = cfg.init(&ops, 2, &mut rng(0)).err().unwrap();
    assert!(matches!(err, NnError::InvalidConfig { layer: "BilinearFusion", field: "heads", .. }), "{err}");
}
