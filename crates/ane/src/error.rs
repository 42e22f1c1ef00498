//! Why the ANE engine refuses to plan weights (its matmuls then run elsewhere).

/// A planning error: the message names the tensor or the budget involved.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AneError {
    /// A weight is planned twice.
    #[error("{0} is already planned")]
    AlreadyPlanned(String),
    /// The groups do not fit the program, function or byte budgets.
    #[error("{0}")]
    Budget(String),
}
