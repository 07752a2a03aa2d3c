//! Native built-in functions: Rust code behind the same package, catalog, placement and routing as
//! JavaScript functions. A package names one with `entry = "native:NAME"` and carries no source.
//! They exist for system functions and for measuring the mesh without a sandbox in the way.
//!
//! Each running native function is an actor that speaks [`InstanceMsg`], like a sandbox instance,
//! so the router cannot tell them apart.

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::sandbox::{InstanceMsg, SandboxError};

/// The prefix of a native entry.
pub const NATIVE_PREFIX: &str = "native:";

/// A built-in function: a pure transformation of JSON input to JSON output.
pub trait BaseFunction: Send + Sync + 'static {
    fn execute(&self, input: serde_json::Value) -> Result<serde_json::Value, SandboxError>;
}

/// Returns its input unchanged (the cheapest possible function: a benchmark floor).
struct Echo;

impl BaseFunction for Echo {
    fn execute(&self, input: serde_json::Value) -> Result<serde_json::Value, SandboxError> {
        Ok(input)
    }
}

/// Returns `{}` whatever it gets.
struct Noop;

impl BaseFunction for Noop {
    fn execute(&self, _input: serde_json::Value) -> Result<serde_json::Value, SandboxError> {
        Ok(serde_json::json!({}))
    }
}

/// The names of the built-ins, for error messages.
pub const BUILTINS: &[&str] = &["echo", "noop"];

/// The built-in named by an entry such as `native:echo`, if the entry is native and known.
pub fn builtin(entry: &str) -> Option<std::sync::Arc<dyn BaseFunction>> {
    match entry.strip_prefix(NATIVE_PREFIX)? {
        "echo" => Some(std::sync::Arc::new(Echo)),
        "noop" => Some(std::sync::Arc::new(Noop)),
        _ => None,
    }
}

/// Whether an entry names a native built-in (known or not).
pub fn is_native(entry: &str) -> bool {
    entry.starts_with(NATIVE_PREFIX)
}

/// An actor serving one native function with the instance protocol.
pub struct NativeActor;

impl Actor for NativeActor {
    type Msg = InstanceMsg;
    type State = std::sync::Arc<dyn BaseFunction>;
    type Arguments = std::sync::Arc<dyn BaseFunction>;

    async fn pre_start(
        &self,
        _myself: ActorRef<InstanceMsg>,
        function: std::sync::Arc<dyn BaseFunction>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(function)
    }

    async fn handle(
        &self,
        _myself: ActorRef<InstanceMsg>,
        msg: InstanceMsg,
        function: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            InstanceMsg::Execute { input, reply, .. } => {
                let _ = reply.send(function.execute(input));
            }
            InstanceMsg::Validate { reply } => {
                let _ = reply.send(Ok(true));
            }
            InstanceMsg::Test { reply } => {
                let _ = reply.send(Ok(
                    serde_json::json!({ "passed": 0, "failed": 0, "results": [] }),
                ));
            }
            InstanceMsg::HeapBytes { reply } => {
                let _ = reply.send(0);
            }
        }
        Ok(())
    }
}
