//! The Monitor (to come).
