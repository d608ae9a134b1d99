//! The engagement simulator: an ads log with known ground truth.
//!
//! World: users (two latent taste vectors, three interest categories, an activity
//! level, a preferred device), ads (a category, an advertiser, latent vectors near
//! their category's, a quality, a bid, a popularity that drifts day to day; new ads
//! arrive every day) and three surfaces that behave differently:
//! - `home_feed`: no context; clicks follow the user's interests;
//! - `related_pins`: context = the category of the pin being viewed; matching ads win,
//!   saves are common;
//! - `search`: context = the query's category; a strong match effect, higher CTR.
//!
//! Each request shows K candidate ads at positions 1..K. For each, with
//! `c1 = user·ad affinity` (taste vector 1) and `c2` (taste vector 2, independent):
//! - click: `p_click = σ(base_s + a_s·c1 + match_s·[ctx = cat] + int_s·[cat ∈ interests]
//!   + quality + popularity(day) + device + 0.5·sin(2·c1))`, stored as `p_click_true`;
//! - save: the MMoE paper's construction, `σ(base'_s + ρ·c1 + √(1−ρ²)·c2 + 0.5·quality
//!   + 1.0·click)`, ρ = `save_click_correlation`;
//! - position bias: an impression is examined with probability
//!   `(1/position)^η_device`; unexamined impressions get no click and no save;
//! - dwell time (seconds, regression, clicks only; 0 otherwise, mask = click):
//!   log-normal around `2.5 + 0.6·c1 + 0.5·[search] + quality`;
//! - conversion (rare, only after a click): `σ(−5.0 + 0.8·c1 + advertiser effect
//!   + 0.4·ln bid)`.
//!
//! Drift: popularity follows a random walk, new ads start with a novelty boost that
//! decays, and each day shifts the base rates slightly, so later days differ from
//! earlier ones (what incremental training and retention experiments need).

use super::write::{write_parquet_atomic, write_text_atomic};
use super::SimSummary;
use crate::error::{DataError, Result};
use arrow::array::{ArrayRef, Float64Array, Int32Array, Int64Array, Int64Builder, ListBuilder, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Normal, StandardNormal};
use rayon::prelude::*;
use std::path::Path;
use std::sync::Arc;

pub const SURFACES: [&str; 3] = ["home_feed", "related_pins", "search"];
pub const DEVICES: [&str; 3] = ["ios", "android", "web"];
const LATENT: usize = 8;

/// Simulator parameters (the defaults make the `mixrank demo` data).
#[derive(Debug, Clone)]
pub struct EngagementParams {
    pub seed: u64,
    pub days: usize,
    /// First day, `YYYY-MM-DD`.
    pub start_day: String,
    pub requests_per_day: usize,
    /// Candidates per request (positions 1..=K).
    pub candidates: usize,
    pub users: usize,
    pub initial_ads: usize,
    pub new_ads_per_day: usize,
    pub advertisers: usize,
    pub categories: usize,
    /// ρ in the save task's construction.
    pub save_click_correlation: f64,
    pub row_group_rows: usize,
    /// How each request's candidates are ordered into positions 1..=K. `None`: at
    /// random, so position is independent of appeal. `Some(σ)`: by a production ranker's
    /// noisy estimate of the click logit, `z_click + σ·N(0, 1)`, best first, so better
    /// ads are shown higher and examined more — the selection bias of real logs, which a
    /// model that reads position (or ignores it) confounds with appeal.
    pub logged_ranking_noise: Option<f64>,
    /// Write only the rows of this surface (one of [`SURFACES`]); the world and every
    /// request are simulated as without it (the same random streams), so the rows
    /// written are exactly that surface's rows of the full simulation (what a model
    /// trained on one surface reads). `None`: every row.
    pub only_surface: Option<String>,
}

impl Default for EngagementParams {
    fn default() -> Self {
        EngagementParams {
            seed: 7,
            days: 7,
            start_day: "2026-01-01".into(),
            requests_per_day: 10_000,
            candidates: 10,
            users: 20_000,
            initial_ads: 5_000,
            new_ads_per_day: 500,
            advertisers: 400,
            categories: 32,
            save_click_correlation: 0.5,
            row_group_rows: 32_768,
            logged_ranking_noise: None,
            only_surface: None,
        }
    }
}

struct User {
    taste1: [f64; LATENT],
    taste2: [f64; LATENT],
    interests: [i64; 3],
    activity: f64,
    device_pref: [f64; 3],
}

struct Ad {
    category: i64,
    advertiser: i64,
    v1: [f64; LATENT],
    v2: [f64; LATENT],
    quality: f64,
    bid: f64,
    created_day: usize,
}

struct World {
    users: Vec<User>,
    /// Cumulative user activity, for sampling users by activity.
    user_cdf: Vec<f64>,
    ads: Vec<Ad>,
    /// `[day][ad]` popularity (NaN before the ad exists).
    popularity: Vec<Vec<f64>>,
    advertiser_conv: Vec<f64>,
    /// Ads by category, per day: ids of live ads.
    live_by_cat: Vec<Vec<Vec<u32>>>,
    live: Vec<Vec<u32>>,
}

fn gauss_vec(rng: &mut impl Rng, scale: f64) -> [f64; LATENT] {
    let mut v = [0.0; LATENT];
    for x in &mut v {
        let g: f64 = StandardNormal.sample(rng);
        *x = g * scale;
    }
    v
}

fn dot(a: &[f64; LATENT], b: &[f64; LATENT]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

impl World {
    fn build(p: &EngagementParams) -> World {
        let mut rng = rand::rngs::StdRng::seed_from_u64(p.seed);
        let s = 1.0 / (LATENT as f64).sqrt();
        let cat1: Vec<[f64; LATENT]> = (0..p.categories).map(|_| gauss_vec(&mut rng, s)).collect();
        let cat2: Vec<[f64; LATENT]> = (0..p.categories).map(|_| gauss_vec(&mut rng, s)).collect();
        let act = LogNormal::new(0.0, 1.0).expect("valid");
        let users: Vec<User> = (0..p.users)
            .map(|_| {
                let interests = [0; 3].map(|_| rng.random_range(0..p.categories as i64));
                // Tastes lean towards the first interest's category.
                let mut taste1 = gauss_vec(&mut rng, s);
                let mut taste2 = gauss_vec(&mut rng, s);
                for k in 0..LATENT {
                    taste1[k] += cat1[interests[0] as usize][k];
                    taste2[k] += cat2[interests[0] as usize][k];
                }
                let d = rng.random_range(0..3);
                let mut device_pref = [0.15; 3];
                device_pref[d] = 0.7;
                User { taste1, taste2, interests, activity: act.sample(&mut rng), device_pref }
            })
            .collect();
        let mut user_cdf = Vec::with_capacity(users.len());
        let mut acc = 0.0;
        for u in &users {
            acc += u.activity;
            user_cdf.push(acc);
        }
        let bid = LogNormal::new(0.0, 0.5).expect("valid");
        let quality = Normal::new(0.0, 0.5).expect("valid");
        let mut ads = Vec::new();
        let new_ad = |rng: &mut rand::rngs::StdRng, day: usize| {
            let category = rng.random_range(0..p.categories as i64);
            let mut v1 = gauss_vec(rng, 0.5 * s);
            let mut v2 = gauss_vec(rng, 0.5 * s);
            for k in 0..LATENT {
                v1[k] += cat1[category as usize][k];
                v2[k] += cat2[category as usize][k];
            }
            Ad {
                category,
                advertiser: rng.random_range(0..p.advertisers as i64),
                v1,
                v2,
                quality: quality.sample(rng),
                bid: bid.sample(rng),
                created_day: day,
            }
        };
        for _ in 0..p.initial_ads {
            ads.push(new_ad(&mut rng, 0));
        }
        for day in 1..p.days {
            for _ in 0..p.new_ads_per_day {
                ads.push(new_ad(&mut rng, day));
            }
        }
        let walk = Normal::new(0.0, 0.15).expect("valid");
        let mut pop = vec![f64::NAN; ads.len()];
        let mut popularity = Vec::with_capacity(p.days);
        for day in 0..p.days {
            for (i, a) in ads.iter().enumerate() {
                if a.created_day == day {
                    let g: f64 = StandardNormal.sample(&mut rng);
                    pop[i] = 0.3 * g;
                } else if a.created_day < day {
                    pop[i] += walk.sample(&mut rng);
                }
            }
            popularity.push(pop.clone());
        }
        let advertiser_conv = (0..p.advertisers)
            .map(|_| 0.6 * Distribution::<f64>::sample(&StandardNormal, &mut rng))
            .collect::<Vec<f64>>();
        let mut live = Vec::new();
        let mut live_by_cat = Vec::new();
        for day in 0..p.days {
            let l: Vec<u32> = (0..ads.len() as u32).filter(|&i| ads[i as usize].created_day <= day).collect();
            let mut by_cat = vec![Vec::new(); p.categories];
            for &i in &l {
                by_cat[ads[i as usize].category as usize].push(i);
            }
            live.push(l);
            live_by_cat.push(by_cat);
        }
        World { users, user_cdf, ads, popularity, advertiser_conv, live_by_cat, live }
    }
}

/// Column buffers for one day.
#[derive(Default)]
struct DayCols {
    request_id: Vec<i64>,
    user_id: Vec<i64>,
    ad_id: Vec<i64>,
    advertiser_id: Vec<i64>,
    ad_category: Vec<i64>,
    context_category: Vec<i64>,
    interests: Vec<[i64; 3]>,
    surface: Vec<&'static str>,
    device: Vec<&'static str>,
    position: Vec<i32>,
    user_activity: Vec<f64>,
    ad_age_days: Vec<f64>,
    bid: Vec<f64>,
    ad_hist_ctr: Vec<Option<f64>>,
    click: Vec<i32>,
    save: Vec<i32>,
    dwell_time: Vec<f64>,
    conversion: Vec<i32>,
    p_click_true: Vec<f64>,
    p_save_true: Vec<f64>,
}

impl DayCols {
    /// Keeps the rows of one surface, in order.
    fn retain_surface(&mut self, name: &str) {
        let keep: Vec<bool> = self.surface.iter().map(|s| *s == name).collect();
        fn retain<T>(v: &mut Vec<T>, keep: &[bool]) {
            let mut i = 0;
            v.retain(|_| {
                i += 1;
                keep[i - 1]
            });
        }
        retain(&mut self.request_id, &keep);
        retain(&mut self.user_id, &keep);
        retain(&mut self.ad_id, &keep);
        retain(&mut self.advertiser_id, &keep);
        retain(&mut self.ad_category, &keep);
        retain(&mut self.context_category, &keep);
        retain(&mut self.interests, &keep);
        retain(&mut self.surface, &keep);
        retain(&mut self.device, &keep);
        retain(&mut self.position, &keep);
        retain(&mut self.user_activity, &keep);
        retain(&mut self.ad_age_days, &keep);
        retain(&mut self.bid, &keep);
        retain(&mut self.ad_hist_ctr, &keep);
        retain(&mut self.click, &keep);
        retain(&mut self.save, &keep);
        retain(&mut self.dwell_time, &keep);
        retain(&mut self.conversion, &keep);
        retain(&mut self.p_click_true, &keep);
        retain(&mut self.p_save_true, &keep);
    }
}

fn simulate_day(p: &EngagementParams, w: &World, day: usize) -> DayCols {
    let mut rng = rand::rngs::StdRng::seed_from_u64(p.seed ^ (0xd1b5_4a32_d192_ed03u64.wrapping_mul(day as u64 + 1)));
    let n = p.requests_per_day * p.candidates;
    let mut c = DayCols::default();
    c.request_id.reserve(n);
    let base_click = [-2.4, -2.0, -1.5];
    let affinity = [1.6, 1.0, 0.6];
    let match_eff = [0.0, 0.9, 1.6];
    let interest_eff = [1.0, 0.5, 0.3];
    let base_save = [-2.8, -2.0, -3.2];
    let device_eff = [0.15, 0.0, -0.2];
    let eta = [0.6, 0.8, 1.0];
    let day_shift = 0.08 * ((day as f64) * 0.9).sin();
    let rho = p.save_click_correlation;
    let rho2 = (1.0 - rho * rho).max(0.0).sqrt();
    let dwell_noise = Normal::new(0.0, 0.5).expect("valid");
    let total = *w.user_cdf.last().expect("users");
    let live = &w.live[day];
    for q in 0..p.requests_per_day {
        let request_id = ((day as i64) << 32) | q as i64;
        let x = rng.random::<f64>() * total;
        let uid = w.user_cdf.partition_point(|&v| v < x).min(w.users.len() - 1);
        let u = &w.users[uid];
        let s = match rng.random::<f64>() {
            r if r < 0.5 => 0,
            r if r < 0.8 => 1,
            _ => 2,
        };
        let r: f64 = rng.random();
        let d = if r < u.device_pref[0] {
            0
        } else if r < u.device_pref[0] + u.device_pref[1] {
            1
        } else {
            2
        };
        let ctx: i64 = if s == 0 {
            -1
        } else if rng.random::<f64>() < 0.6 {
            u.interests[rng.random_range(0..3)]
        } else {
            rng.random_range(0..p.categories as i64)
        };
        // Candidate generation: mostly from the context (or an interest), else any live ad.
        let pick = |rng: &mut rand::rngs::StdRng| -> usize {
            let focus = if s == 0 { u.interests[rng.random_range(0..3)] } else { ctx };
            let pool = &w.live_by_cat[day][focus as usize];
            (if !pool.is_empty() && rng.random::<f64>() < 0.55 {
                pool[rng.random_range(0..pool.len())]
            } else {
                live[rng.random_range(0..live.len())]
            }) as usize
        };
        // The click logit of an ad in this request (before position bias), its age and affinities.
        let appeal = |aid: usize| {
            let a = &w.ads[aid];
            let pop = w.popularity[day][aid];
            let age = (day - a.created_day) as f64;
            let novelty = 0.4 * (-age / 2.0).exp();
            let c1 = 3.0 * dot(&u.taste1, &a.v1);
            let c2 = 3.0 * dot(&u.taste2, &a.v2);
            let is_match = (ctx == a.category) as u8 as f64;
            let is_interest = u.interests.contains(&a.category) as u8 as f64;
            let z_click = base_click[s]
                + day_shift
                + affinity[s] * c1
                + match_eff[s] * is_match
                + interest_eff[s] * is_interest
                + a.quality
                + pop
                + novelty
                + device_eff[d]
                + 0.5 * (2.0 * c1).sin();
            (z_click, age, c1, c2)
        };
        let mut show = |rng: &mut rand::rngs::StdRng, aid: usize, pos: usize| {
            let a = &w.ads[aid];
            let (z_click, age, c1, c2) = appeal(aid);
            let p_click = sigmoid(z_click);
            let examined = rng.random::<f64>() < (1.0 / pos as f64).powf(eta[d]);
            let clicked = examined && rng.random::<f64>() < p_click;
            let z_save = base_save[s] + rho * c1 + rho2 * c2 + 0.5 * a.quality;
            let p_save = sigmoid(z_save);
            let saved = examined && rng.random::<f64>() < sigmoid(z_save + if clicked { 1.0 } else { 0.0 });
            let (dwell, converted) = if clicked {
                let mu = 2.5 + 0.6 * c1 + if s == 2 { 0.5 } else { 0.0 } + a.quality;
                let dwell = (mu + dwell_noise.sample(rng)).exp();
                let p_conv = sigmoid(-5.0 + 0.8 * c1 + w.advertiser_conv[a.advertiser as usize] + 0.4 * a.bid.ln());
                (dwell, rng.random::<f64>() < p_conv)
            } else {
                (0.0, false)
            };
            // A noisy, lagged popularity estimate; unknown for ads younger than a day.
            let hist_ctr = (age >= 1.0).then(|| {
                let g: f64 = StandardNormal.sample(rng);
                sigmoid(-2.0 + w.popularity[day - 1][aid] + a.quality + 0.2 * g)
            });
            c.request_id.push(request_id);
            c.user_id.push(uid as i64);
            c.ad_id.push(aid as i64);
            c.advertiser_id.push(a.advertiser);
            c.ad_category.push(a.category);
            c.context_category.push(ctx);
            c.interests.push(u.interests);
            c.surface.push(SURFACES[s]);
            c.device.push(DEVICES[d]);
            c.position.push(pos as i32);
            c.user_activity.push(u.activity * 20.0);
            c.ad_age_days.push(age);
            c.bid.push(a.bid);
            c.ad_hist_ctr.push(hist_ctr);
            c.click.push(clicked as i32);
            c.save.push(saved as i32);
            c.dwell_time.push(dwell);
            c.conversion.push(converted as i32);
            c.p_click_true.push(p_click);
            c.p_save_true.push(p_save);
        };
        match p.logged_ranking_noise {
            // Random order: position independent of appeal.
            None => {
                for pos in 1..=p.candidates {
                    let aid = pick(&mut rng);
                    show(&mut rng, aid, pos);
                }
            }
            // A production ranker orders the candidates by a noisy estimate of their click
            // logit, best first: better ads are shown higher (the selection bias of logs).
            Some(sigma) => {
                let mut ranked: Vec<(f64, usize)> = (0..p.candidates)
                    .map(|_| {
                        let aid = pick(&mut rng);
                        let g: f64 = StandardNormal.sample(&mut rng);
                        (appeal(aid).0 + sigma * g, aid)
                    })
                    .collect();
                ranked.sort_by(|x, y| y.0.total_cmp(&x.0));
                for (i, &(_, aid)) in ranked.iter().enumerate() {
                    show(&mut rng, aid, i + 1);
                }
            }
        }
    }
    c
}

fn schema() -> Arc<Schema> {
    let i64f = |n: &str| Field::new(n, DataType::Int64, false);
    let f64f = |n: &str| Field::new(n, DataType::Float64, false);
    let i32f = |n: &str| Field::new(n, DataType::Int32, false);
    Arc::new(Schema::new(vec![
        i64f("request_id"),
        i64f("user_id"),
        i64f("ad_id"),
        i64f("advertiser_id"),
        i64f("ad_category"),
        i64f("context_category"),
        Field::new("user_interests", DataType::List(Arc::new(Field::new("item", DataType::Int64, true))), false),
        Field::new("surface", DataType::Utf8, false),
        Field::new("device", DataType::Utf8, false),
        i32f("position"),
        f64f("user_activity"),
        f64f("ad_age_days"),
        f64f("bid"),
        Field::new("ad_hist_ctr", DataType::Float64, true),
        i32f("click"),
        i32f("save"),
        f64f("dwell_time"),
        i32f("conversion"),
        f64f("p_click_true"),
        f64f("p_save_true"),
    ]))
}

fn to_record_batch(c: DayCols) -> Result<RecordBatch> {
    let mut lb = ListBuilder::new(Int64Builder::with_capacity(c.interests.len() * 3));
    for i in &c.interests {
        lb.values().append_slice(i);
        lb.append(true);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(c.request_id)),
        Arc::new(Int64Array::from(c.user_id)),
        Arc::new(Int64Array::from(c.ad_id)),
        Arc::new(Int64Array::from(c.advertiser_id)),
        Arc::new(Int64Array::from(c.ad_category)),
        Arc::new(Int64Array::from(c.context_category)),
        Arc::new(lb.finish()),
        Arc::new(StringArray::from(c.surface)),
        Arc::new(StringArray::from(c.device)),
        Arc::new(Int32Array::from(c.position)),
        Arc::new(Float64Array::from(c.user_activity)),
        Arc::new(Float64Array::from(c.ad_age_days)),
        Arc::new(Float64Array::from(c.bid)),
        Arc::new(Float64Array::from(c.ad_hist_ctr)),
        Arc::new(Int32Array::from(c.click)),
        Arc::new(Int32Array::from(c.save)),
        Arc::new(Float64Array::from(c.dwell_time)),
        Arc::new(Int32Array::from(c.conversion)),
        Arc::new(Float64Array::from(c.p_click_true)),
        Arc::new(Float64Array::from(c.p_save_true)),
    ];
    RecordBatch::try_new(schema(), cols).map_err(|e| DataError::Other(format!("simulator schema: {e}")))
}

/// Adds `n` days to a `YYYY-MM-DD` date.
pub fn add_days(day: &str, n: usize) -> Result<String> {
    if !crate::config::is_day(day) {
        return Err(DataError::Other(format!("start day must be YYYY-MM-DD, found {day:?}")));
    }
    let (mut y, mut m, mut d): (i32, u32, u32) =
        (day[0..4].parse().unwrap_or(0), day[5..7].parse().unwrap_or(1), day[8..10].parse().unwrap_or(1));
    for _ in 0..n {
        let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let dim = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][m as usize - 1];
        d += 1;
        if d > dim {
            d = 1;
            m += 1;
            if m > 12 {
                m = 1;
                y += 1;
            }
        }
    }
    Ok(format!("{y:04}-{m:02}-{d:02}"))
}

/// Writes `out/day=YYYY-MM-DD/part-00000.parquet` for each day and `out/mixrank.toml`
/// (train = all days but the last two, validation = the second to last, test = the
/// last).
pub fn simulate_engagement(p: &EngagementParams, out: &Path) -> Result<SimSummary> {
    if p.days < 3 {
        return Err(DataError::Other(format!("need at least 3 days (train, validation, test), got {}", p.days)));
    }
    if p.candidates == 0
        || p.requests_per_day == 0
        || p.users == 0
        || p.initial_ads == 0
        || p.categories == 0
        || p.advertisers == 0
    {
        return Err(DataError::Other(
            "candidates, requests, users, ads, categories and advertisers must be positive".into(),
        ));
    }
    if let Some(sigma) = p.logged_ranking_noise.filter(|s| !(s.is_finite() && *s >= 0.0)) {
        return Err(DataError::Other(format!("logged_ranking_noise must be a finite number >= 0, found {sigma}")));
    }
    if !(-1.0..=1.0).contains(&p.save_click_correlation) {
        return Err(DataError::Other(format!(
            "save_click_correlation must be in [-1, 1], found {}",
            p.save_click_correlation
        )));
    }
    if let Some(name) = p.only_surface.as_deref().filter(|n| !SURFACES.contains(n)) {
        return Err(DataError::Other(format!("only_surface: no surface `{name}` (surfaces: {})", SURFACES.join(", "))));
    }
    let days: Vec<String> = (0..p.days).map(|i| add_days(&p.start_day, i)).collect::<Result<_>>()?;
    let world = World::build(p);
    let results: Vec<Result<(std::path::PathBuf, u64)>> = (0..p.days)
        .into_par_iter()
        .map(|day| {
            let mut cols = simulate_day(p, &world, day);
            if let Some(name) = &p.only_surface {
                cols.retain_surface(name);
            }
            let rows = cols.request_id.len() as u64;
            let rb = to_record_batch(cols)?;
            let path = out.join(format!("day={}", days[day])).join("part-00000.parquet");
            write_parquet_atomic(&path, &[rb], p.row_group_rows)?;
            Ok((path, rows))
        })
        .collect();
    let mut files = Vec::new();
    let mut rows = 0;
    for r in results {
        let (f, n) = r?;
        files.push(f);
        rows += n;
    }
    let config = out.join("mixrank.toml");
    write_text_atomic(&config, &(engagement_config(p, &days) + DEFAULT_MODEL))?;
    Ok(SimSummary { rows, files, config })
}

/// The model the written config trains unless `--model FILE` replaces it: the
/// shared-bottom DCNv2 baseline (the same text as configs/models/shared_bottom_dcnv2.toml),
/// so `mixrank simulate --out sim && mixrank train sim/mixrank.toml --out run` works as is.
pub const DEFAULT_MODEL: &str = concat!("\n", include_str!("../../../../configs/models/shared_bottom_dcnv2.toml"));

/// The config text written beside the simulated data (data, features and tasks; the
/// simulator appends [`DEFAULT_MODEL`]).
pub fn engagement_config(p: &EngagementParams, days: &[String]) -> String {
    let n = days.len();
    format!(
        r#"# Written by `mixrank simulate` (seed {seed}, {n} days, {req} requests/day x {k} candidates).
# Train on all days but the last two, validate on the second to last, test on the last.

[data]
format = "parquet"
batch_size = 2048
shuffle_buffer = 65536
seed = {seed}

[data.splits.train]
paths = ["day=*/*.parquet"]
days = {{ from = "{d0}", to = "{dt}" }}

[data.splits.validation]
paths = ["day=*/*.parquet"]
days = {{ from = "{dv}", to = "{dv}" }}

[data.splits.test]
paths = ["day=*/*.parquet"]
days = {{ from = "{dl}", to = "{dl}" }}

[[features.categorical]]
name = "user_id"
buckets = {ub}
dim = 16

[[features.categorical]]
name = "ad_id"
buckets = {ab}
dim = 16

[[features.categorical]]
name = "advertiser_id"
buckets = {vb}
dim = 16

# Ad category, the request's context category and the user's interests share one table.
[tables.category]
buckets = {cb}
dim = 16

[[features.categorical]]
name = "ad_category"
table = "category"

[[features.categorical]]
name = "context_category"
table = "category"

[[features.categorical]]
name = "user_interests"
table = "category"
multi_valued = {{ pooling = "mean" }}

[[features.categorical]]
name = "surface_id"
column = "surface"
vocabulary = ["home_feed", "related_pins", "search"]
dim = 4

[[features.categorical]]
name = "device_id"
column = "device"
vocabulary = ["ios", "android", "web"]
dim = 4

# Position as a plain feature: the head then learns examination with appeal, and scores
# at each row's logged position. With configs/models/shared_bottom_position_tower.toml it
# feeds only the shallow position tower, which is off at evaluation and serving.
[[features.categorical]]
name = "position_id"
column = "position"
buckets = 64
dim = 4

[[features.dense]]
name = "user_activity"
log1p = true
standardize = true

[[features.dense]]
name = "ad_age_days"
log1p = true
standardize = true

[[features.dense]]
name = "bid"
log1p = true
standardize = true

[[features.dense]]
name = "ad_hist_ctr"
clip = [0.0, 1.0]
standardize = true
missing = 0.0
missing_indicator = true

[[tasks]]
name = "click"
kind = "binary"
label = "click"

[[tasks]]
name = "save"
kind = "binary"
label = "save"

[[tasks]]
name = "dwell"
kind = "regression"
label = "dwell_time"
label_transform = "log1p"
mask = "click"
weight = 0.5

[[tasks]]
name = "conversion"
kind = "binary"
label = "conversion"
mask = "click"

[columns]
segment = {{ column = "surface", values = ["home_feed", "related_pins", "search"] }}
device = {{ column = "device", values = ["ios", "android", "web"] }}
position = {{ column = "position", max = {k} }}
request_id = "request_id"
keep = ["p_click_true", "p_save_true"]

# What `mixrank eval` / `compare` add with the simulator's ground truth: expected AUC and
# per-request NDCG@5 against the true probabilities (docs/metrics.md), and each request
# replayed as a one-slot second-price auction on bid x pCTR (docs/auction.md).
[eval]
truth = {{ click = "p_click_true", save = "p_save_true" }}
ndcg_k = 5
auction = {{ bid = "bid", click_task = "click", slots = 1, reserve = 0.0 }}
"#,
        seed = p.seed,
        req = p.requests_per_day,
        k = p.candidates,
        d0 = days[0],
        dt = days[n - 3],
        dv = days[n - 2],
        dl = days[n - 1],
        ub = (p.users * 2).next_power_of_two(),
        ab = ((p.initial_ads + p.new_ads_per_day * p.days) * 2).next_power_of_two(),
        vb = (p.advertisers * 2).next_power_of_two(),
        cb = (p.categories * 4).next_power_of_two(),
    )
}

#[cfg(test)]
mod tests {
    use super::add_days;

    #[test]
    fn add_days_crosses_months_and_leap_years() {
        assert_eq!(add_days("2026-01-31", 1).unwrap(), "2026-02-01");
        assert_eq!(add_days("2028-02-28", 1).unwrap(), "2028-02-29");
        assert_eq!(add_days("2026-12-31", 1).unwrap(), "2027-01-01");
        assert_eq!(add_days("2026-01-01", 0).unwrap(), "2026-01-01");
    }
}
