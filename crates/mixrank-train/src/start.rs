//! How a training run starts: from scratch, resumed from its own newest good checkpoint
//! (`--resume`), or warm-started from a parent checkpoint (`--init`).

use crate::checkpoint::{read_verified, Cursor, MANIFEST};
use crate::early_stop::EarlyStopState;
use crate::error::{write_atomic, Result, TrainError};
use crate::lineage::{teacher_columns, train_days, Lineage, Stage};
use crate::optimizers::Optimizers;
use crate::periodic::{newest_good, CHECKPOINTS};
use crate::trainer::TrainOptions;
use crate::warm_start::{differing_keys, toml_value, warm_start};
use mixrank_data::config::TableKind;
use mixrank_data::stats::{fit_train_stats, DenseStats};
use mixrank_data::ExperimentConfig;
use mixrank_engine::Backend;
use mixrank_model::{build_model, Model};
use rand::SeedableRng;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `RUN/vocabularies.json`: the run's learned vocabularies (table name → values in row
/// order), written when the run starts; checkpoint manifests hold the same.
pub const VOCABULARIES: &str = "vocabularies.json";

/// The state a run's training loop starts from.
pub(crate) struct Start<B: Backend> {
    /// The run's config with its learned vocabularies built (fresh run), inherited
    /// (`--init`) or restored (`--resume`): what every encoder of the run uses.
    pub cfg: Arc<ExperimentConfig>,
    pub stats: DenseStats,
    pub model: Box<dyn Model<B>>,
    pub optim: Optimizers<B>,
    pub step: u64,
    pub examples: u64,
    pub cursor: Cursor,
    pub lineage: Lineage,
    /// Early-stopping bookkeeping to continue from (`--resume` of a checkpoint that
    /// recorded it); `None` starts monitoring afresh.
    pub early_stopping: Option<EarlyStopState>,
    /// JSON lines for the train log (refused checkpoints, resume, warm-start changes,
    /// distillation notices); each is also passed to the progress callback.
    pub events: Vec<serde_json::Value>,
}

/// `dir` itself when it holds a manifest, else `dir/checkpoint` (a run directory).
pub fn checkpoint_dir(dir: &Path) -> PathBuf {
    if dir.join(MANIFEST).is_file() {
        dir.to_path_buf()
    } else {
        dir.join(crate::periodic::FINAL)
    }
}

pub(crate) fn start<B: Backend + 'static>(
    cfg: &Arc<ExperimentConfig>,
    opts: &TrainOptions,
    ops: &B,
) -> Result<Start<B>> {
    let t = &cfg.train;
    let bs = cfg.data.batch_size;
    let mut events = Vec::new();
    let say = |events: &mut Vec<serde_json::Value>, v: serde_json::Value, line: String| {
        if let Some(p) = opts.progress {
            p(&line);
        }
        events.push(v);
    };
    let model_of = |cfg: &ExperimentConfig| -> Result<(Box<dyn Model<B>>, Optimizers<B>)> {
        let mut model = build_model(cfg, ops, bs, &mut rand::rngs::StdRng::seed_from_u64(t.seed))?;
        let optim = Optimizers::new(t, ops, &mut *model)?;
        Ok((model, optim))
    };
    if opts.resume {
        let found = resume_point(opts)?;
        for (dir, reason) in &found.refused {
            let mut moved = None;
            // A refused periodic checkpoint is moved aside so it is neither retried nor
            // counted among the kept ones; the evidence stays on disk.
            if dir.parent().is_some_and(|p| p.ends_with(CHECKPOINTS)) {
                if let Some(name) = dir.file_name().and_then(|n| n.to_str()) {
                    let to = dir.with_file_name(format!("refused-{name}"));
                    if std::fs::rename(dir, &to).is_ok() {
                        moved = Some(to);
                    }
                }
            }
            say(
                &mut events,
                json!({"event": "checkpoint_refused", "dir": dir, "reason": reason, "moved_to": moved}),
                format!("refused checkpoint {}: {reason}", dir.display()),
            );
        }
        let v = found.checkpoint;
        let here = toml::to_string(&cfg.wire).map_err(|e| TrainError::Other(format!("config to TOML: {e}")))?;
        if v.manifest.config_toml != here {
            let stored: toml::Value =
                toml::from_str(&v.manifest.config_toml).unwrap_or(toml::Value::String("(unreadable)".into()));
            let diff = differing_keys("", &stored, &toml_value(&cfg.wire));
            return Err(TrainError::Resume(format!(
                "the config differs from the one {} was trained with ({}); use --init to warm-start a new run instead",
                v.dir.display(),
                if diff.is_empty() { "formatting".into() } else { diff.join("; ") }
            )));
        }
        // The stored vocabularies, not rebuilt: the rows are the ones trained so far.
        let cfg = Arc::new(cfg.with_vocabularies(&v.manifest.vocabularies)?);
        if let Some(t) = cfg.unbuilt_vocabularies().first() {
            return Err(TrainError::Resume(format!(
                "{} stores no vocabulary for the learned table `{t}`",
                v.dir.display()
            )));
        }
        let (mut model, mut optim) = model_of(&cfg)?;
        v.fill_model(ops, &mut *model)?;
        v.restore_optimizers(ops, &mut *model, &mut optim)?;
        let m = &v.manifest;
        let early = match (t.early_stopping_patience, m.early_stopping) {
            (0, _) => String::new(),
            (_, Some(e)) => match e.best {
                Some(_) => format!(
                    "; early stopping: best at step {}, then {} of {} validations without improvement",
                    e.best_step, e.without_improvement, e.patience
                ),
                None => format!("; early stopping: no improvement yet ({} validations)", e.without_improvement),
            },
            (_, None) => "; early stopping starts afresh (the checkpoint has no early-stopping state)".into(),
        };
        say(
            &mut events,
            json!({"event": "resume", "from": v.dir, "step": m.step, "examples": m.examples,
                   "epoch": m.cursor.epoch, "batch_in_epoch": m.cursor.batch_in_epoch,
                   "early_stopping": m.early_stopping}),
            format!(
                "resuming from {} at step {} (epoch {}, batch {} of the epoch){early}",
                v.dir.display(),
                m.step,
                m.cursor.epoch,
                m.cursor.batch_in_epoch
            ),
        );
        return Ok(Start {
            cfg,
            stats: m.dense_stats.clone(),
            model,
            optim,
            step: m.step,
            examples: m.examples,
            cursor: m.cursor,
            lineage: m.lineage.clone(),
            early_stopping: m.early_stopping,
            events,
        });
    }

    // A warm start keeps the parent's learned vocabularies (for tables of the same name
    // and rule): the parent's rows were trained with them. The others are built here.
    let parent = match &opts.init {
        Some(init) => Some(read_verified(&checkpoint_dir(init))?),
        None => None,
    };
    let mut vocabulary_changes = Vec::new();
    let mut inherited = BTreeMap::new();
    if let Some(p) = &parent {
        let pcfg = p.config()?;
        for table in cfg.learned_tables() {
            let TableKind::Learned { rule, .. } = &table.kind else { continue };
            let from_parent = pcfg.tables.iter().find(|o| o.name == table.name).and_then(|o| match &o.kind {
                TableKind::Learned { rule: r, built: Some(v) } if r == rule => Some(v),
                _ => None,
            });
            match from_parent {
                Some(v) => {
                    vocabulary_changes.push(format!(
                        "table `{}`: the parent's learned vocabulary ({} values), not rebuilt",
                        table.name,
                        v.values.len()
                    ));
                    inherited.insert(table.name.clone(), v.values.clone());
                }
                None => vocabulary_changes.push(format!(
                    "table `{}`: vocabulary learned from this run's training split (the parent has no \
                     learned vocabulary of that name and rule)",
                    table.name
                )),
            }
        }
    }
    let cfg = Arc::new(cfg.with_vocabularies(&inherited)?);
    let standardize = cfg.dense.iter().any(|d| d.standardize);
    let fresh_stats = || DenseStats { mean: vec![0.0; cfg.dense.len()], std: vec![1.0; cfg.dense.len()], rows: 0 };
    let (mut stats, cfg) = if standardize || !cfg.unbuilt_vocabularies().is_empty() {
        let fitted = fit_train_stats(cfg.clone(), cfg.split("train")?, Some(opts.stats_rows))?;
        let dense = if standardize { fitted.dense } else { fresh_stats() };
        (dense, Arc::new(cfg.with_vocabularies(&fitted.vocabularies)?))
    } else {
        (fresh_stats(), cfg)
    };
    let (mut model, mut optim) = model_of(&cfg)?;
    let teachers = teacher_columns(&cfg);
    let mut lineage = Lineage {
        parent: None,
        stage: opts.stage,
        days: vec![train_days(&cfg)],
        teacher: if opts.distillation_enabled(&cfg) { teachers.clone() } else { None },
        warm_start: Vec::new(),
    };
    if opts.stage == Stage::Incremental && teachers.is_some() {
        let (v, line) = if opts.allow_distill_in_incremental {
            ("on", "warning: distillation kept on in the incremental stage (--distill-in-incremental)")
        } else {
            ("off", "incremental stage: distillation is off (pass --distill-in-incremental to keep it)")
        };
        say(&mut events, json!({"event": "distillation", "stage": "incremental", "distillation": v}), line.into());
    }
    match &parent {
        Some(parent) => {
            let dir = parent.dir.clone();
            let mut changes = vocabulary_changes;
            changes.extend(warm_start(parent, &cfg, ops, &mut *model, &mut optim, &mut stats)?);
            let mut days = parent.manifest.lineage.days.clone();
            days.push(train_days(&cfg));
            lineage.parent = Some(dir.display().to_string());
            lineage.days = days;
            lineage.warm_start = changes.clone();
            let mut line = format!("warm start from {} (step {})", dir.display(), parent.manifest.step);
            if changes.is_empty() {
                line.push_str(": same features and tables");
            }
            for c in &changes {
                line.push_str("\n    ");
                line.push_str(c);
            }
            say(&mut events, json!({"event": "warm_start", "parent": dir, "changes": changes}), line);
        }
        None if opts.stage == Stage::Incremental => {
            return Err(TrainError::Other(
                "--stage incremental warm-starts from a parent: give --init CHECKPOINT".into(),
            ))
        }
        None => {}
    }
    // One writer of the run directory: rank 0 of a data-parallel job.
    if opts.is_lead() {
        write_atomic(
            &opts.out_dir.join("dense_stats.json"),
            serde_json::to_string_pretty(&stats).map_err(|e| TrainError::Other(e.to_string()))?.as_bytes(),
        )?;
        let vocabularies = cfg.learned_vocabularies();
        if !vocabularies.is_empty() {
            // For people and tools; the run reads its vocabularies from checkpoint manifests.
            write_atomic(
                &opts.out_dir.join(VOCABULARIES),
                serde_json::to_string_pretty(&vocabularies).map_err(|e| TrainError::Other(e.to_string()))?.as_bytes(),
            )?;
        }
    }
    Ok(Start {
        cfg,
        stats,
        model,
        optim,
        step: 0,
        examples: 0,
        cursor: Cursor::default(),
        lineage,
        early_stopping: None,
        events,
    })
}

/// The checkpoint `--resume` continues from. In one process, the newest that verifies.
/// Data-parallel, every rank resumes from the same one, whatever the number of ranks
/// that wrote it (the replicated checkpoint is the whole model, and the data cursor
/// counts global batches): rank 0 chooses (and moves refused ones aside), every rank
/// reads the one it chose. A failure on rank 0 is every rank's, with its message.
fn resume_point(opts: &TrainOptions) -> Result<crate::periodic::Found> {
    let Some(c) = opts.collective.as_deref() else { return newest_good(&opts.out_dir) };
    let (chosen, mut msg) = if c.rank() == 0 {
        match newest_good(&opts.out_dir) {
            Ok(f) => {
                let dir = f.checkpoint.dir.to_string_lossy().into_owned();
                (Some(f), format!("ok:{dir}").into_bytes())
            }
            Err(e) => (None, format!("err:{e}").into_bytes()),
        }
    } else {
        (None, Vec::new())
    };
    c.broadcast_bytes(&mut msg, 0)?;
    let msg = String::from_utf8_lossy(&msg).into_owned();
    match (chosen, msg.split_once(':')) {
        (Some(found), _) => Ok(found),
        (None, Some(("ok", dir))) => {
            Ok(crate::periodic::Found { checkpoint: read_verified(Path::new(dir))?, refused: Vec::new() })
        }
        (None, Some(("err", e))) => Err(TrainError::Resume(format!("rank 0: {e}"))),
        (None, _) => Err(TrainError::Distributed(format!("rank 0 sent no resume point ({msg:?})"))),
    }
}
