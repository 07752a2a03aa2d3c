//! The Chef (design §13): agents that turn a plain-language request into a validated, tested,
//! deployed function.

pub mod analysis;
pub mod bm25;
pub mod messages;
pub mod monitor;
pub mod providers;
