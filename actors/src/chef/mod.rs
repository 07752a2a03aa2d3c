//! The Chef (design §13): agents that turn a plain-language request into a validated, tested,
//! deployed function.

pub mod agents;
pub mod analysis;
pub mod bm25;
pub mod checks;
pub mod messages;
pub mod monitor;
pub mod pipeline;

pub use pipeline::{Chef, ChefError, ChefOptions, ChefRun, RunOutcome, StageEvent, StageReport};
pub mod providers;
