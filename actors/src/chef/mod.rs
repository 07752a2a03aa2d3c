pub mod analysis;
pub mod monitor;
