//! Which gates a head has and which experts each one mixes, in the order of its
//! weights: what expert-utilisation reports (`mixrank eval`, the HTML report) need to
//! name a gate's rows and columns. Names come from the config's task list at report
//! time; this module only says who serves whom.

/// Who a gate serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateRole {
    /// MMoE: task `t`'s gate.
    Task(usize),
    /// OMoE: the one gate every task reads.
    AllTasks,
    /// PLE: task `task`'s gate at `level`.
    PleTask { level: usize, task: usize },
    /// PLE: the shared gate of an inner `level`.
    PleShared { level: usize },
}

/// Whose expert list an expert is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpertOwner {
    /// The head's expert list (MMoE, OMoE).
    Head,
    /// A PLE level's experts of task `t`.
    PleTask(usize),
    /// A PLE level's shared experts.
    PleShared,
}

/// One expert a gate mixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpertRef {
    pub owner: ExpertOwner,
    /// Index within the owner's list.
    pub index: usize,
    /// `dcnv2`, `masknet`, `finalmlp` or `mlp`.
    pub kind: String,
}

/// A two-tower model's tower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TowerName {
    User,
    Item,
}

impl TowerName {
    pub fn as_str(self) -> &'static str {
        match self {
            TowerName::User => "user",
            TowerName::Item => "item",
        }
    }
}

/// A gate and, in the order of its weights, the experts it mixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateInfo {
    pub role: GateRole,
    pub experts: Vec<ExpertRef>,
    /// The tower whose head the gate is in (a two-tower model); `None` in a ranking
    /// model's head.
    pub tower: Option<TowerName>,
}
