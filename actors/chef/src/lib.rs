//! The Chef (docs/chef.md): agents that turn a plain-language request into a validated, tested,
//! deployed function.

pub mod agents;
pub mod bm25;
pub mod checks;
pub mod ingredients;
pub mod kitchen;
pub mod ledger;
pub mod messages;
pub mod monitor;
pub mod pipeline;
pub mod roi;

pub use kitchen::{Kitchen, KitchenError, KitchenOptions};
pub use pipeline::{Chef, ChefError, ChefOptions, ChefRun, RunOutcome, StageEvent, StageReport};
pub use roi::{RoiError, UsageByFunction};
pub mod providers;
