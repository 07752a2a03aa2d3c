//! Source to bytecode, and the resolver that decides what a function may import.
//!
//! The function's context has no `Eval` intrinsic (that is what blocks `eval` and `Function`),
//! so it cannot compile source. Modules are compiled here in a context that can, and only their
//! bytecode enters the function's context: the function's module in a throwaway context of
//! its own runtime (so its memory limit applies to compilation too), `klf:base` once per process.
//! QuickJS-ng resolves imports while compiling, so a forbidden import fails here.

use std::sync::{Arc, Mutex, OnceLock};

use rquickjs::context::intrinsic;
use rquickjs::loader::{ImportAttributes, Loader, Resolver};
use rquickjs::module::{Declared, WriteOptions};
use rquickjs::{AsyncContext, AsyncRuntime, CatchResultExt, CaughtError, Ctx, Module};

use super::SandboxError;

/// The one importable module.
pub(super) const BASE_MODULE: &str = "klf:base";
const BASE_SOURCE: &str = include_str!("base.js");

/// Bytecode of `klf:base`, compiled on first use.
pub(super) fn base_bytecode() -> Result<&'static [u8], SandboxError> {
    static BYTECODE: OnceLock<Result<Vec<u8>, String>> = OnceLock::new();
    BYTECODE
        .get_or_init(|| {
            let runtime = rquickjs::Runtime::new().map_err(|e| e.to_string())?;
            let context = rquickjs::Context::full(&runtime).map_err(|e| e.to_string())?;
            context.with(|ctx| {
                Module::declare(ctx.clone(), BASE_MODULE, BASE_SOURCE)
                    .and_then(|module| module.write(WriteOptions::default()))
                    .catch(&ctx)
                    .map_err(|e| e.to_string())
            })
        })
        .as_deref()
        .map_err(|e| SandboxError::Internal(format!("klf:base does not compile: {e}")))
}

/// Compiles the function's module (named `entry`) to bytecode in a throwaway context.
pub(super) async fn compile_module(
    runtime: &AsyncRuntime,
    entry: &str,
    source: &str,
) -> Result<Vec<u8>, SandboxError> {
    // Compiling needs only the parser (`Eval`) and the regular-expression compiler (for
    // literals); nothing runs in this context.
    let context = AsyncContext::custom::<(intrinsic::Eval, intrinsic::RegExpCompiler)>(runtime)
        .await
        .map_err(|e| SandboxError::Internal(format!("cannot create a compile context: {e}")))?;
    let entry = entry.to_string();
    let source = source.to_string();
    context
        .with(move |ctx| {
            match Module::declare(ctx.clone(), entry.as_str(), source)
                .and_then(|module| module.write(WriteOptions::default()))
                .catch(&ctx)
            {
                Ok(bytecode) => Ok(bytecode),
                Err(error) => Err(compile_error(&entry, error)),
            }
        })
        .await
}

fn compile_error(entry: &str, error: CaughtError<'_>) -> SandboxError {
    match error {
        CaughtError::Exception(exception) => {
            let message = exception.message().unwrap_or_default();
            if message.contains("out of memory") {
                // The limit is reported by the caller, which knows it.
                return SandboxError::OutOfMemory { limit_bytes: 0 };
            }
            let (line, column) = exception
                .stack()
                .and_then(|stack| position_in(&stack, entry))
                .map_or((None, None), |(line, column)| (Some(line), Some(column)));
            SandboxError::Syntax {
                message,
                line,
                column,
            }
        }
        CaughtError::Value(value) => SandboxError::Syntax {
            message: format!("{value:?}"),
            line: None,
            column: None,
        },
        CaughtError::Error(error) => SandboxError::Internal(format!("compiling {entry}: {error}")),
    }
}

/// The first `entry:LINE:COLUMN` in a QuickJS stack trace.
pub(super) fn position_in(stack: &str, entry: &str) -> Option<(u32, u32)> {
    let needle = format!("{entry}:");
    let mut rest = stack;
    while let Some(at) = rest.find(&needle) {
        rest = &rest[at + needle.len()..];
        let mut numbers = rest
            .split(|c: char| !c.is_ascii_digit())
            .take(2)
            .map(str::parse::<u32>);
        if let (Some(Ok(line)), Some(Ok(column))) = (numbers.next(), numbers.next()) {
            return Some((line, column));
        }
    }
    None
}

/// Imports a function asked for and was refused, newest last.
pub(super) type RefusedImports = Arc<Mutex<Vec<String>>>;

/// Resolves `klf:base` and nothing else; remembers what it refused so the host can name it.
pub(super) struct KlfResolver {
    pub(super) refused: RefusedImports,
}

impl Resolver for KlfResolver {
    fn resolve<'js>(
        &mut self,
        _ctx: &Ctx<'js>,
        base: &str,
        name: &str,
        _attributes: Option<ImportAttributes<'js>>,
    ) -> rquickjs::Result<String> {
        if name == BASE_MODULE {
            return Ok(name.to_string());
        }
        if let Ok(mut refused) = self.refused.lock() {
            refused.push(name.to_string());
        }
        Err(rquickjs::Error::new_resolving_message(
            base,
            name,
            format!("functions may import only \"{BASE_MODULE}\""),
        ))
    }
}

/// Loads `klf:base` from its bytecode.
pub(super) struct KlfLoader;

impl Loader for KlfLoader {
    fn load<'js>(
        &mut self,
        ctx: &Ctx<'js>,
        name: &str,
        _attributes: Option<ImportAttributes<'js>>,
    ) -> rquickjs::Result<Module<'js, Declared>> {
        if name != BASE_MODULE {
            return Err(rquickjs::Error::new_loading(name));
        }
        let bytecode = base_bytecode()
            .map_err(|e| rquickjs::Error::new_loading_message(name, e.to_string()))?;
        // SAFETY: the bytecode was written by this build of QuickJS from our own source.
        unsafe { Module::load(ctx.clone(), bytecode) }
    }
}

/// Installs the `klf:*`-only resolver and loader on `runtime`; the returned list records the
/// imports it refused, so a failed compile can name them.
pub(super) async fn install_loader(runtime: &AsyncRuntime) -> RefusedImports {
    let refused = RefusedImports::default();
    runtime
        .set_loader(
            KlfResolver {
                refused: refused.clone(),
            },
            KlfLoader,
        )
        .await;
    refused
}

/// Compiles a module in a runtime of its own, without running any of it: syntax errors (with line
/// and column) and forbidden imports surface here, which is what a deploy checks before publishing.
pub(super) async fn check_module(
    entry: &str,
    source: &str,
    memory_bytes: usize,
) -> Result<(), SandboxError> {
    let runtime = AsyncRuntime::new()
        .map_err(|e| SandboxError::Internal(format!("cannot create a runtime: {e}")))?;
    runtime.set_memory_limit(memory_bytes).await;
    let refused = install_loader(&runtime).await;
    let driver = tokio::spawn(runtime.drive());
    let result = compile_module(&runtime, entry, source)
        .await
        .map(drop)
        .map_err(|error| super::engine::refused_import(&refused).unwrap_or(error));
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_position_of_the_entry_in_a_stack() {
        assert_eq!(position_in("    at main.js:3:9\n", "main.js"), Some((3, 9)));
        assert_eq!(
            position_in("    at f (other.js:1:1)\n    at main.js:12:40\n", "main.js"),
            Some((12, 40))
        );
        assert_eq!(position_in("    at <anonymous>\n", "main.js"), None);
    }

    #[test]
    fn base_module_compiles() {
        assert!(base_bytecode().is_ok_and(|bytes| !bytes.is_empty()));
    }
}
