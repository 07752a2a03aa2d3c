//! [`InstanceActor`]: an [`Instance`] as a ractor actor, the shape the rest of the node speaks.
//!
//! The handler does not await calls: each `Execute` runs on a task of its own and answers its
//! reply port when done, so calls on one instance overlap (a call waiting for a host call does not
//! hold up the others) and the mailbox never queues behind a slow function. The runtime lets
//! JavaScript run one slice at a time; overlap only pays off for calls that wait, which is what
//! functions composing other functions do.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::debug;

use super::{CallMeta, Instance, SandboxError};

/// Messages of an [`InstanceActor`].
#[derive(Debug)]
pub enum InstanceMsg {
    /// One call.
    Execute {
        input: serde_json::Value,
        meta: CallMeta,
        reply: RpcReplyPort<Result<serde_json::Value, SandboxError>>,
    },
    /// The function's `validate()`.
    Validate {
        reply: RpcReplyPort<Result<bool, SandboxError>>,
    },
    /// The function's `test()`.
    Test {
        reply: RpcReplyPort<Result<serde_json::Value, SandboxError>>,
    },
    /// Current JavaScript heap size, in bytes.
    HeapBytes { reply: RpcReplyPort<usize> },
}

/// An actor owning one started [`Instance`] (its arguments): start the instance first, so that its
/// typed errors (`Syntax`, `BadModule`, …) reach whoever deploys it. The node's router may also
/// hold the same `Arc` to call the instance without a mailbox hop on its hot path.
pub struct InstanceActor;

impl Actor for InstanceActor {
    type Msg = InstanceMsg;
    type State = Arc<Instance>;
    type Arguments = Arc<Instance>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        instance: Arc<Instance>,
    ) -> Result<Self::State, ActorProcessingErr> {
        debug!(function = %instance.function_id(), "instance actor started");
        Ok(instance)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        instance: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let instance = instance.clone();
        match msg {
            InstanceMsg::Execute { input, meta, reply } => {
                tokio::spawn(async move {
                    // A caller that stopped waiting is not an error.
                    let _ = reply.send(instance.execute(input, meta).await);
                });
            }
            InstanceMsg::Validate { reply } => {
                tokio::spawn(async move {
                    let _ = reply.send(instance.validate().await);
                });
            }
            InstanceMsg::Test { reply } => {
                tokio::spawn(async move {
                    let _ = reply.send(instance.test().await);
                });
            }
            InstanceMsg::HeapBytes { reply } => {
                let _ = reply.send(instance.heap_bytes());
            }
        }
        Ok(())
    }
}
