//! Why an invocation failed, as a stable kind (carried on the wire and in the API) and a message.

use klf_functions::sandbox::{Cause, SandboxError};

/// The kinds of invocation failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InvokeErrorKind {
    UnknownFunction,
    NoMatchingVersion,
    NotDeployed,
    NoHost,
    NotHosted,
    Overloaded,
    CallDepthExceeded,
    InputTooLarge,
    BadInput,
    Timeout,
    OutOfMemory,
    UserError,
    SyntaxError,
    BadModule,
    BadOutput,
    CapabilityDenied,
    HostError,
    Unreachable,
    Internal,
}

macro_rules! kinds {
    ($($kind:ident => $text:literal),* $(,)?) => {
        impl InvokeErrorKind {
            /// The kind's stable name.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$kind => $text,)* }
            }

            /// The kind named `text` (unknown names, from newer nodes, become `Internal`).
            pub fn parse(text: &str) -> Self {
                match text { $($text => Self::$kind,)* _ => Self::Internal }
            }
        }
    };
}

kinds! {
    UnknownFunction => "unknown_function",
    NoMatchingVersion => "no_matching_version",
    NotDeployed => "not_deployed",
    NoHost => "no_host",
    NotHosted => "not_hosted",
    Overloaded => "overloaded",
    CallDepthExceeded => "call_depth_exceeded",
    InputTooLarge => "input_too_large",
    BadInput => "bad_input",
    Timeout => "timeout",
    OutOfMemory => "out_of_memory",
    UserError => "user_error",
    SyntaxError => "syntax_error",
    BadModule => "bad_module",
    BadOutput => "bad_output",
    CapabilityDenied => "capability_denied",
    HostError => "host_error",
    Unreachable => "unreachable",
    Internal => "internal",
}

/// An invocation failure.
///
/// The kind and the message are what travels to peers and API clients; the cause, when an error
/// of another layer (the sandbox, the registry, a parser) led to this one, stays on the node that
/// saw it, as the source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvokeError {
    pub kind: InvokeErrorKind,
    pub message: String,
    #[source]
    pub cause: Option<Cause>,
}

impl InvokeError {
    pub fn new(kind: InvokeErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            cause: None,
        }
    }

    /// This error, caused by `cause`.
    pub fn caused_by(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.cause = Some(Cause::new(cause));
        self
    }

    /// Whether the function itself answered: its code ran (or failed to run within its own
    /// limits) and produced this error, so the function is deployed and serving. Routing
    /// failures (not known or not placed yet, no host, unreachable, overloaded) are not answers.
    pub fn answered_by_function(&self) -> bool {
        matches!(
            self.kind,
            InvokeErrorKind::UserError
                | InvokeErrorKind::Timeout
                | InvokeErrorKind::OutOfMemory
                | InvokeErrorKind::BadOutput
                | InvokeErrorKind::CapabilityDenied
                | InvokeErrorKind::HostError
                | InvokeErrorKind::BadInput
                | InvokeErrorKind::InputTooLarge
        )
    }

    /// Whether waiting cannot help: the function's code does not load.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self.kind,
            InvokeErrorKind::SyntaxError | InvokeErrorKind::BadModule
        )
    }

    /// Whether the attempt provably never started on the target, so another host may be tried
    /// even for a function that is not idempotent.
    pub fn never_started(&self) -> bool {
        matches!(
            self.kind,
            InvokeErrorKind::NotHosted | InvokeErrorKind::Overloaded | InvokeErrorKind::Unreachable
        )
    }
}

impl From<SandboxError> for InvokeError {
    fn from(e: SandboxError) -> Self {
        let kind = match &e {
            SandboxError::Syntax { .. } => InvokeErrorKind::SyntaxError,
            SandboxError::User { .. } => InvokeErrorKind::UserError,
            SandboxError::Timeout { .. } => InvokeErrorKind::Timeout,
            SandboxError::OutOfMemory { .. } => InvokeErrorKind::OutOfMemory,
            SandboxError::CapabilityDenied { .. } => InvokeErrorKind::CapabilityDenied,
            SandboxError::BadModule(_) => InvokeErrorKind::BadModule,
            SandboxError::BadOutput(_) | SandboxError::OutputFailure { .. } => {
                InvokeErrorKind::BadOutput
            }
            SandboxError::Host(_)
            | SandboxError::HostFailure { .. }
            | SandboxError::Crypto(_)
            | SandboxError::Secret(_)
            | SandboxError::ModelUnavailable(_)
            | SandboxError::Model(_)
            | SandboxError::ModelFailure(_)
            | SandboxError::Schedule(_)
            | SandboxError::Http(_) => InvokeErrorKind::HostError,
            SandboxError::Internal(_) | SandboxError::InternalFailure { .. } => {
                InvokeErrorKind::Internal
            }
        };
        Self::new(kind, e.to_string()).caused_by(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sandbox_error_becomes_the_cause_of_the_invoke_error() {
        use std::error::Error as _;
        let store = std::io::Error::other("disk full");
        let error = InvokeError::from(SandboxError::host_failure("kv", store));
        assert_eq!(error.kind, InvokeErrorKind::HostError);
        assert_eq!(error.message, "host error: kv: disk full");
        let sandbox = error.source().map(ToString::to_string);
        assert_eq!(sandbox.as_deref(), Some("host error: kv: disk full"));
        let root = error
            .source()
            .and_then(|s| s.source())
            .map(ToString::to_string);
        assert_eq!(root.as_deref(), Some("disk full"));
    }

    #[test]
    fn kinds_round_trip_by_name() {
        for kind in [
            InvokeErrorKind::Overloaded,
            InvokeErrorKind::UserError,
            InvokeErrorKind::NotHosted,
        ] {
            assert_eq!(InvokeErrorKind::parse(kind.as_str()), kind);
        }
        assert_eq!(
            InvokeErrorKind::parse("from_the_future"),
            InvokeErrorKind::Internal
        );
    }
}
