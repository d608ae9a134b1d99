use crate::util::*;
use mixrank_data::simulate::{simulate_engagement, simulate_mmoe_paper, EngagementParams, MmoePaperParams};
use mixrank_data::stats::split_stats;
use std::sync::Arc;

fn small() -> EngagementParams {
    EngagementParams {
        days: 4,
        requests_per_day: 3000,
        users: 3000,
        initial_ads: 1000,
        new_ads_per_day: 200,
        ..Default::default()
    }
}

#[test]
fn engagement_is_deterministic_and_reads_with_its_config() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let sa = simulate_engagement(&small(), a.path()).unwrap();
    simulate_engagement(&small(), b.path()).unwrap();
    assert_eq!(sa.rows, 4 * 3000 * 10);
    for f in &sa.files {
        let rel = f.strip_prefix(a.path()).unwrap();
        assert_eq!(std::fs::read(f).unwrap(), std::fs::read(b.path().join(rel)).unwrap(), "{}", rel.display());
    }
    let cfg = mixrank_data::ExperimentConfig::load(&sa.config).unwrap();
    let (train, bad) = read_split(cfg, "train").unwrap();
    assert_eq!(bad, 0);
    assert_eq!(concat(&train).rows, 2 * 30_000);
}

#[test]
fn engagement_has_the_promised_structure() {
    let d = tempfile::tempdir().unwrap();
    let s = simulate_engagement(&small(), d.path()).unwrap();
    let cfg = mixrank_data::ExperimentConfig::load(&s.config).unwrap();
    let b = concat(&read_split(cfg.clone(), "train").unwrap().0);
    let (click, save, dwell, conv) = (b.label(0), b.label(1), b.label(2), b.label(3));
    let rate = |f: &dyn Fn(usize) -> bool, g: &dyn Fn(usize) -> bool| {
        let rows: Vec<usize> = (0..b.rows).filter(|&r| f(r)).collect();
        rows.iter().filter(|&&r| g(r)).count() as f64 / rows.len() as f64
    };
    // Position bias: observed CTR falls with position.
    let ctr1 = rate(&|r| b.position[r] == 1, &|r| click[r] == 1.0);
    let ctr10 = rate(&|r| b.position[r] == 10, &|r| click[r] == 1.0);
    assert!(ctr1 > 2.0 * ctr10, "ctr@1 {ctr1} ctr@10 {ctr10}");
    // Surfaces differ: search has the highest CTR at position 1.
    let ctr_search = rate(&|r| b.position[r] == 1 && b.segment[r] == 2, &|r| click[r] == 1.0);
    let ctr_home = rate(&|r| b.position[r] == 1 && b.segment[r] == 0, &|r| click[r] == 1.0);
    assert!(ctr_search > ctr_home, "search {ctr_search} home {ctr_home}");
    // Dwell and conversion count only on clicks; conversion is rare.
    for r in 0..b.rows {
        assert_eq!(b.mask(2)[r], click[r]);
        assert_eq!(b.mask(3)[r], click[r]);
        if click[r] == 0.0 {
            assert_eq!(dwell[r], 0.0);
        } else {
            assert!(dwell[r] > 0.0);
        }
    }
    let cvr = rate(&|r| click[r] == 1.0, &|r| conv[r] == 1.0);
    assert!((0.005..0.15).contains(&cvr), "cvr {cvr}");
    // Saves correlate with clicks.
    let save_given_click = rate(&|r| click[r] == 1.0, &|r| save[r] == 1.0);
    let save_given_no = rate(&|r| click[r] == 0.0, &|r| save[r] == 1.0);
    assert!(save_given_click > save_given_no);
    // The ground truth column is an unbiased probability: its mean at position 1 is
    // above the observed CTR at position 1 (the examination probability is below 1).
    let p_true = b.kept(0);
    let pos1: Vec<usize> = (0..b.rows).filter(|&r| b.position[r] == 1).collect();
    let mean_true = pos1.iter().map(|&r| p_true[r] as f64).sum::<f64>() / pos1.len() as f64;
    assert!((mean_true - ctr1).abs() < 0.05, "truth {mean_true} vs observed ctr@1 {ctr1}");
    // Stats run over it.
    let cfg = Arc::new(cfg);
    let st = split_stats(cfg.clone(), cfg.split("test").unwrap(), None).unwrap();
    assert_eq!(st.rows, 30_000);
    assert_eq!(st.segments.len(), 3);
}

#[test]
fn mmoe_paper_task_correlation_follows_p() {
    let corr = |p: f64| {
        let d = tempfile::tempdir().unwrap();
        let params = MmoePaperParams { correlation: p, train_rows: 4000, ..Default::default() };
        let s = simulate_mmoe_paper(&params, d.path()).unwrap();
        let cfg = mixrank_data::ExperimentConfig::load(&s.config).unwrap();
        assert_eq!(cfg.dense.len(), 100);
        let b = concat(&read_split(cfg, "train").unwrap().0);
        assert_eq!(b.rows, 4000);
        let (y1, y2) = (b.label(0), b.label(1));
        let n = b.rows as f64;
        let m1 = y1.iter().map(|&v| v as f64).sum::<f64>() / n;
        let m2 = y2.iter().map(|&v| v as f64).sum::<f64>() / n;
        let cov = y1.iter().zip(y2).map(|(&a, &b)| (a as f64 - m1) * (b as f64 - m2)).sum::<f64>();
        let v1 = y1.iter().map(|&a| (a as f64 - m1).powi(2)).sum::<f64>();
        let v2 = y2.iter().map(|&b| (b as f64 - m2).powi(2)).sum::<f64>();
        cov / (v1 * v2).sqrt()
    };
    let (c1, c05, c0) = (corr(1.0), corr(0.5), corr(0.0));
    // With c = 0.3 the signal variance is small next to the noise (σ = 0.1), so even
    // p = 1 gives a label correlation well below 1; the order is what must hold.
    assert!(c1 > 0.5, "p = 1: {c1}");
    assert!(c1 > c05 && c05 > c0, "label correlation must fall with p: {c1} {c05} {c0}");
}

#[test]
fn mmoe_paper_weights_follow_the_construction() {
    use mixrank_data::simulate::mmoe_paper::MmoePaperTruth;
    use rand::SeedableRng;
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    for p in [1.0, 0.9, 0.5, 0.0] {
        let params = MmoePaperParams { correlation: p, ..Default::default() };
        let t = MmoePaperTruth::new(&params, &mut rand::rngs::StdRng::seed_from_u64(3));
        let c2 = params.scale * params.scale;
        assert!((dot(&t.w1, &t.w1) - c2).abs() < 1e-12);
        assert!((dot(&t.w2, &t.w2) - c2).abs() < 1e-12);
        // cos(w1, w2) = p.
        assert!((dot(&t.w1, &t.w2) / c2 - p).abs() < 1e-12, "p = {p}");
        assert_eq!((t.alpha.len(), t.beta.len()), (5, 5));
    }
}

#[test]
fn committed_engagement_config_matches_the_generator() {
    use mixrank_data::simulate::engagement::{add_days, engagement_config};
    let p = EngagementParams::default();
    let days: Vec<String> = (0..p.days).map(|i| add_days(&p.start_day, i).unwrap()).collect();
    let generated = engagement_config(&p, &days)
        .replace("paths = [\"day=*/*.parquet\"]", "paths = [\"../mixrank-demo/data/day=*/*.parquet\"]");
    let committed = std::fs::read_to_string(repo_root().join("configs/engagement.toml")).unwrap();
    let (_, body) = committed.split_once('\n').unwrap();
    assert_eq!(body, generated, "configs/engagement.toml is out of date: regenerate it from `mixrank simulate`");
}

/// Mean of `p_click_true` over the rows shown at `pos`, and the squared standard error
/// of that mean.
fn truth_at(b: &mixrank_data::Batch, pos: u32) -> (f64, f64) {
    let v: Vec<f64> = (0..b.rows).filter(|&r| b.position[r] == pos).map(|r| b.kept(0)[r] as f64).collect();
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var / n)
}

#[test]
fn logged_ranking_shows_better_ads_higher_and_random_order_does_not() {
    let read = |noise: Option<f64>| {
        let d = tempfile::tempdir().unwrap();
        let p = EngagementParams { logged_ranking_noise: noise, ..small() };
        let s = simulate_engagement(&p, d.path()).unwrap();
        let cfg = mixrank_data::ExperimentConfig::load(&s.config).unwrap();
        concat(&read_split(cfg, "train").unwrap().0)
    };
    // Mean truth at position 1 minus at position 10, and 4 standard errors of that
    // difference (6,000 rows per position).
    let gap = |b: &mixrank_data::Batch| {
        let ((m1, s1), (m10, s10)) = (truth_at(b, 1), truth_at(b, 10));
        (m1 - m10, 4.0 * (s1 + s10).sqrt())
    };
    // Random order: the true click probability does not depend on position.
    let (d, bound) = gap(&read(None));
    assert!(d.abs() < bound, "random order: truth@1 - truth@10 = {d}, 4 s.e. = {bound}");
    // Ranked by a noisy estimate of appeal: better ads first.
    let (d, bound) = gap(&read(Some(0.5)));
    assert!(d > bound.max(0.05), "ranked: truth@1 - truth@10 = {d}, 4 s.e. = {bound}");
    let bad = EngagementParams { logged_ranking_noise: Some(f64::NAN), ..small() };
    let e = simulate_engagement(&bad, tempfile::tempdir().unwrap().path()).unwrap_err().to_string();
    assert!(e.contains("logged_ranking_noise"), "{e}");
}

#[test]
fn at_position_reads_every_row_as_shown_there() {
    let d = tempfile::tempdir().unwrap();
    let s = simulate_engagement(&small(), d.path()).unwrap();
    let cfg = Arc::new(mixrank_data::ExperimentConfig::load(&s.config).unwrap());
    let f = cfg.categorical.iter().position(|f| f.name == "position_id").expect("the simulator's position feature");
    let read = |enc: mixrank_data::Encoder| {
        let mut opts = mixrank_data::pipeline::StreamOptions::from_config(&cfg, false);
        opts.batch_size = 1 << 20;
        concat(&mixrank_data::pipeline::read_all(Arc::new(enc), cfg.split("test").unwrap(), opts).unwrap().0)
    };
    let plain = read(mixrank_data::Encoder::new(cfg.clone(), mixrank_data::DenseMode::Raw).unwrap());
    let at = |n| {
        read(mixrank_data::Encoder::new(cfg.clone(), mixrank_data::DenseMode::Raw).unwrap().at_position(n).unwrap())
    };
    for n in [1u32, 3] {
        let fixed = at(n);
        // The id position n has in the plain encoding, now on every row.
        let r = (0..plain.rows).find(|&r| plain.position[r] == n).unwrap();
        let id = plain.cat[f].ids[r];
        assert!(fixed.position.iter().all(|&p| p == n));
        assert!(fixed.cat[f].ids.iter().all(|&i| i == id), "position {n}");
        // Everything else is read as before.
        assert_eq!(fixed.rows, plain.rows);
        assert_eq!(fixed.label(0), plain.label(0));
        for g in (0..cfg.categorical.len()).filter(|&g| g != f) {
            assert_eq!(fixed.cat[g].ids, plain.cat[g].ids);
        }
    }
    let e = mixrank_data::Encoder::new(cfg.clone(), mixrank_data::DenseMode::Raw).unwrap().at_position(0);
    assert!(e.is_err());
}

#[test]
fn only_surface_writes_that_surfaces_rows_of_the_same_simulation() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let p = EngagementParams { days: 3, requests_per_day: 400, ..small() };
    let full = simulate_engagement(&p, a.path()).unwrap();
    let only = EngagementParams { only_surface: Some("search".into()), ..p.clone() };
    let one = simulate_engagement(&only, b.path()).unwrap();
    let read = |config: &std::path::Path| {
        let cfg = mixrank_data::ExperimentConfig::load(config).unwrap();
        concat(&read_split(cfg, "test").unwrap().0)
    };
    let (f, o) = (read(&full.config), read(&one.config));
    let search = 2; // id of `search` in the segment's values
    let keep: Vec<usize> = (0..f.rows).filter(|&i| f.segment[i] == search).collect();
    assert!(!keep.is_empty() && keep.len() < f.rows, "{} of {} rows", keep.len(), f.rows);
    assert_eq!(o.rows, keep.len());
    assert!(o.segment.iter().all(|&s| s == search));
    for t in 0..4 {
        let want: Vec<f32> = keep.iter().map(|&i| f.label(t)[i]).collect();
        assert_eq!(o.label(t), &want[..], "task {t}");
    }
    let want: Vec<f32> =
        keep.iter().flat_map(|&i| f.dense[i * f.dense_width..(i + 1) * f.dense_width].to_vec()).collect();
    assert_eq!(o.dense.len(), want.len());
    let bad = EngagementParams { only_surface: Some("stories".into()), ..p };
    let e = simulate_engagement(&bad, tempfile::tempdir().unwrap().path()).unwrap_err().to_string();
    assert!(e.contains("stories") && e.contains("home_feed"), "{e}");
}
