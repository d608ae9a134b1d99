//! mixrank-metrics: offline metrics for ranking models. Knows nothing about tensors:
//! every function takes plain slices of predictions, labels and weights.
//!
//! Conventions: binary predictions are probabilities in [0, 1]; weights are
//! non-negative sample weights (pass `None` for all ones); a metric that is undefined
//! on the given rows (AUC on a single class) is `None`, never NaN.

pub mod auc;
pub mod auction;
pub mod binary;
pub mod bootstrap;
pub mod calibrate;
pub mod regression;
pub mod truth;

pub use auc::{auc, gauc, GroupAuc};
pub use auction::{
    auction_report, compare_auction, AuctionComparison, AuctionMetrics, AuctionReport, AuctionRows, AuctionRules,
};
pub use binary::{binary_metrics, BinaryMetrics};
pub use bootstrap::{paired_bootstrap, paired_bootstrap_units, Better, BootstrapConfig, Lift, Metric, Paired};
pub use calibrate::{ece, FitError, Isotonic, Platt, ECE_BINS};
pub use regression::{regression_metrics, RegressionMetrics};
pub mod report;
pub use report::{compare_task, task_report, TaskComparison, TaskMetrics, TaskReport, TaskRows, TaskType};
pub use truth::{compare_truth, expected_auc, truth_report, TruthComparison, TruthMetrics, TruthReport};
