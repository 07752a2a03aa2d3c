//! The QuickJS sandbox of one function instance (being written).
