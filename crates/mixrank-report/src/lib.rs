//! `mixrank report`: one self-contained HTML page per run (inline CSS and SVG, no
//! scripts, no network), built from plain data so that it knows nothing of tensors,
//! checkpoints or files:
//!
//! - [`log`] parses the trainer's `train_log.jsonl` into loss and validation curves;
//! - [`calibration`] bins predictions into a reliability curve;
//! - [`svg`] draws line charts and heatmaps;
//! - [`page`] lays out the page from a [`ReportInput`].

pub mod calibration;
pub mod error;
pub mod log;
pub mod page;
pub mod svg;

pub use calibration::{calibration_bins, CalibrationBin};
pub use error::ReportError;
pub use log::{parse_train_log, RunLog};
pub use page::{render, GateTable, ReportInput, TaskCalibration};
