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

/// What every function's `klf:base` holds: the runtime glue and `BaseFunction`.
const CORE_SOURCE: &str = include_str!("base.js");

/// The base library, in parts appended to base.js as one module (so that they share
/// its scope): the common helpers (errors, paths, schemas, conditions), which every other part
/// uses, then the classes. Each instance loads `klf:base` into its own heap, so a function gets
/// only the parts it names (see [`Parts::needed_by`]): all of them would more than double the
/// heap and the start time of a small function.
const PARTS: [&str; 6] = [
    include_str!("library/common.js"),
    include_str!("library/security.js"),
    include_str!("library/communication.js"),
    include_str!("library/data.js"),
    include_str!("library/intelligence.js"),
    include_str!("library/workflow.js"),
];

/// Which parts of the library a `klf:base` holds: bit `i` for `PARTS[i]` (bit 0: common).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Parts(u8);

impl Parts {
    pub(super) const ALL: Parts = Parts((1 << PARTS.len()) - 1);
    /// `BaseFunction` alone.
    #[cfg(test)]
    pub(super) const NONE: Parts = Parts(0);

    /// The parts a function's source needs: those with an export the source mentions as a word
    /// (an import names what it uses), plus the common part that the others use; or all of them
    /// if it imports the namespace (`import * as klf`) or imports dynamically. A mention in a
    /// comment costs only memory.
    pub(super) fn needed_by(source: &str) -> Parts {
        if imports_everything(source) {
            return Parts::ALL;
        }
        let mut parts = 0;
        for (i, names) in part_exports().iter().enumerate() {
            if names.iter().any(|name| mentions(source, name)) {
                parts |= 1 << i;
            }
        }
        if parts != 0 {
            parts |= 1;
        }
        Parts(parts)
    }
}

/// The names each part exports (`export class X`, `export function X`), read from the sources.
fn part_exports() -> &'static [Vec<&'static str>] {
    static NAMES: OnceLock<Vec<Vec<&'static str>>> = OnceLock::new();
    NAMES.get_or_init(|| {
        PARTS
            .iter()
            .map(|source| {
                source
                    .lines()
                    .filter_map(|line| {
                        let rest = line.strip_prefix("export ")?;
                        let rest = rest.strip_prefix("async ").unwrap_or(rest);
                        let rest = ["class ", "function ", "const "]
                            .iter()
                            .find_map(|keyword| rest.strip_prefix(keyword))?;
                        let end = rest.find(|c: char| !is_identifier(c)).unwrap_or(rest.len());
                        (end > 0).then(|| &rest[..end])
                    })
                    .collect()
            })
            .collect()
    })
}

fn is_identifier(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

/// `name` occurs in `source` as a whole word.
fn mentions(source: &str, name: &str) -> bool {
    source.match_indices(name).any(|(at, _)| {
        let before = source[..at].chars().next_back();
        let after = source[at + name.len()..].chars().next();
        !before.is_some_and(is_identifier) && !after.is_some_and(is_identifier)
    })
}

/// `import * as …` or `import(…)`: the function may reach any export.
fn imports_everything(source: &str) -> bool {
    source.match_indices("import").any(|(at, _)| {
        let rest = source[at + "import".len()..].trim_start();
        rest.starts_with('*') || rest.starts_with('(')
    })
}

/// Bytecode of `klf:base` with `parts`, compiled on first use.
pub(super) fn base_bytecode(parts: Parts) -> Result<&'static [u8], SandboxError> {
    static BYTECODE: [OnceLock<Result<Vec<u8>, SandboxError>>; 1 << PARTS.len()] =
        [const { OnceLock::new() }; 1 << PARTS.len()];
    const FAILED: &str = "klf:base does not compile";
    BYTECODE[usize::from(parts.0)]
        .get_or_init(|| {
            let mut source = CORE_SOURCE.to_string();
            for (i, part) in PARTS.iter().enumerate() {
                if parts.0 & (1 << i) != 0 {
                    source.push_str(part);
                }
            }
            let engine_failed = |e| SandboxError::internal_failure(FAILED, e);
            let runtime = rquickjs::Runtime::new().map_err(engine_failed)?;
            let context = rquickjs::Context::full(&runtime).map_err(engine_failed)?;
            context.with(|ctx| {
                Module::declare(ctx.clone(), BASE_MODULE, source)
                    .and_then(|module| module.write(base_write_options()))
                    .catch(&ctx)
                    .map_err(|caught| match caught {
                        CaughtError::Error(error) => engine_failed(error),
                        // A JavaScript exception lives in its context; only its text outlives it.
                        thrown => SandboxError::Internal(format!("{FAILED}: {thrown}")),
                    })
            })
        })
        .as_deref()
        .map_err(Clone::clone)
}

/// Every instance loads `klf:base` into its own heap, so its bytecode leaves the source text out
/// (kept, it would be most of the heap of an idle instance). Line numbers stay, for stack traces.
fn base_write_options() -> WriteOptions {
    WriteOptions {
        strip_source: true,
        ..WriteOptions::default()
    }
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
        .map_err(|e| SandboxError::internal_failure("cannot create a compile context", e))?;
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
        CaughtError::Error(error) => {
            SandboxError::internal_failure(format!("compiling {entry}"), error)
        }
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

/// Loads `klf:base` (with the parts the function needs) from its bytecode.
pub(super) struct KlfLoader {
    pub(super) parts: Parts,
}

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
        let bytecode = base_bytecode(self.parts)
            .map_err(|e| rquickjs::Error::new_loading_message(name, e.to_string()))?;
        // SAFETY: the bytecode was written by this build of QuickJS from our own source.
        unsafe { Module::load(ctx.clone(), bytecode) }
    }
}

/// Installs the `klf:*`-only resolver and loader (of `klf:base` with `parts`) on `runtime`; the
/// returned list records the imports it refused, so a failed compile can name them.
pub(super) async fn install_loader(runtime: &AsyncRuntime, parts: Parts) -> RefusedImports {
    let refused = RefusedImports::default();
    runtime
        .set_loader(
            KlfResolver {
                refused: refused.clone(),
            },
            KlfLoader { parts },
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
        .map_err(|e| SandboxError::internal_failure("cannot create a runtime", e))?;
    runtime.set_memory_limit(memory_bytes).await;
    let refused = install_loader(&runtime, Parts::needed_by(source)).await;
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
    fn base_module_compiles_with_and_without_the_library() {
        let core = base_bytecode(Parts::NONE).map(<[u8]>::len);
        let all = base_bytecode(Parts::ALL).map(<[u8]>::len);
        assert!(matches!((core, all), (Ok(core), Ok(all)) if core > 0 && all > core));
    }

    #[test]
    fn a_function_gets_the_parts_it_names() {
        let named = |source: &str| Parts::needed_by(source);
        assert_eq!(
            named("import { BaseFunction } from \"klf:base\";"),
            Parts::NONE
        );
        assert_eq!(
            named("import { BaseFunction, getPath, KlfInputError } from \"klf:base\";"),
            Parts(0b000001)
        );
        assert_eq!(
            named("import { BaseAuthorizer } from \"klf:base\";"),
            Parts(0b000011)
        );
        assert_eq!(
            named("import {\n  BaseDataStore,\n  BaseOrchestrator as O\n} from \"klf:base\";"),
            Parts(0b101001)
        );
        // A name inside a longer identifier is not a mention.
        assert_eq!(named("class MyBaseSerializerX {}"), Parts::NONE);
        assert_eq!(named("import * as klf from \"klf:base\";"), Parts::ALL);
        assert_eq!(named("import   *as klf from \"klf:base\";"), Parts::ALL);
        assert_eq!(named("const m = await import(\"klf:base\");"), Parts::ALL);
        // Every class is found in its part.
        let exports: usize = part_exports().iter().map(Vec::len).sum();
        assert!(exports >= 20, "{:?}", part_exports());
    }
}
