//! Static analysis of a function's JavaScript with a real parser (oxc): what the validator refuses
//! before any code runs, and what it warns about.
//!
//! The sandbox is the barrier that holds at run time (no `eval` intrinsic, `klf:*` imports only,
//! capabilities checked in Rust); this analysis refuses the same things earlier, with the line and
//! column and the reason, so a generator can repair its code and a person can read why.
//!
//! Errors (the code is refused):
//!
//! | rule | what |
//! |---|---|
//! | `parse-error` | the module does not parse as an ES module |
//! | `eval` | `eval`, also through `globalThis.eval`, `window.eval`, `x["eval"]` |
//! | `function-constructor` | `Function`, `new Function` (anything but `x instanceof Function`) |
//! | `constructor-access` | the `.constructor` of a function, class, prototype or constructor (`(() => {}).constructor`, `x.constructor.constructor`), or a `.constructor` called with source text |
//! | `import` | a static or dynamic `import`, or `export … from`, of anything but `klf:*` |
//! | `require` | `require` (CommonJS does not exist in the sandbox) |
//! | `with` | `with` statements |
//! | `debugger` | `debugger` statements |
//! | `global-object` | `globalThis`, `window`, `self`, `global`, `process` |
//! | `prototype-mutation` | `__proto__`; `Object.setPrototypeOf`/`defineProperty`/`assign` on a built-in or its prototype; assigning to a built-in's members |
//! | `default-export` | no `export default class … extends Base*` with `Base*` imported from `klf:base` |
//!
//! Warnings (reported, not refused): `infinite-loop` (`while (true)`, `for (;;)`, `do … while (true)`
//! with no `break`, `return`, `throw` or `yield` inside) and `large-literal` (an array literal of
//! more than [`LARGE_ARRAY_ELEMENTS`] elements, a string of more than [`LARGE_STRING_BYTES`] bytes).
//!
//! The analysis is by name, without scopes: a local variable called `self` or `window` is reported
//! too (rename it). That keeps the rules simple to state and impossible to dodge by shadowing.

use std::collections::{HashMap, HashSet};

use oxc_allocator::Allocator;
use oxc_ast::ast::{
    Argument, ArrayExpression, AssignmentExpression, BinaryExpression, BinaryOperator,
    CallExpression, Class, ComputedMemberExpression, DebuggerStatement, DoWhileStatement,
    ExportAllDeclaration, ExportDefaultDeclarationKind, ExportFromDeclaration, Expression,
    ForStatement, FunctionBody, IdentifierReference, ImportDeclaration, ImportDeclarationSpecifier,
    ImportExpression, MemberExpression, NewExpression, Program, Statement, StaticMemberExpression,
    StringLiteral, TemplateLiteral, WhileStatement, WithStatement,
};
use oxc_ast_visit::{Visit, walk};
use oxc_parser::Parser;
use oxc_span::{GetSpan, SourceType};
use serde::Serialize;

/// Array literals with more elements than this get a `large-literal` warning.
pub const LARGE_ARRAY_ELEMENTS: usize = 10_000;
/// String literals longer than this (bytes) get a `large-literal` warning.
pub const LARGE_STRING_BYTES: usize = 256 * 1024;

/// The rules' names, as they appear in [`Finding::rule`].
pub mod rules {
    pub const PARSE_ERROR: &str = "parse-error";
    pub const EVAL: &str = "eval";
    pub const FUNCTION_CONSTRUCTOR: &str = "function-constructor";
    pub const CONSTRUCTOR_ACCESS: &str = "constructor-access";
    pub const IMPORT: &str = "import";
    pub const REQUIRE: &str = "require";
    pub const WITH: &str = "with";
    pub const DEBUGGER: &str = "debugger";
    pub const GLOBAL_OBJECT: &str = "global-object";
    pub const PROTOTYPE_MUTATION: &str = "prototype-mutation";
    pub const DEFAULT_EXPORT: &str = "default-export";
    pub const INFINITE_LOOP: &str = "infinite-loop";
    pub const LARGE_LITERAL: &str = "large-literal";
}

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The code is refused.
    Error,
    /// Worth a look; the code is not refused for it.
    Warning,
}

/// One thing the analysis found, at a 1-based line and column (in characters).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub rule: &'static str,
    pub message: String,
    pub line: u32,
    pub column: u32,
    pub severity: Severity,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}: {severity}[{}]: {}",
            self.line, self.column, self.rule, self.message
        )
    }
}

/// Everything the analysis found in one module, in source order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Analysis {
    pub findings: Vec<Finding>,
}

impl Analysis {
    /// The findings that refuse the code.
    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
    }

    /// The findings that only warn.
    pub fn warnings(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Warning)
    }

    /// No errors (warnings allowed).
    pub fn is_clean(&self) -> bool {
        self.errors().next().is_none()
    }

    /// Whether any finding is of `rule`.
    pub fn has(&self, rule: &str) -> bool {
        self.findings.iter().any(|f| f.rule == rule)
    }
}

/// Analyzes the ES module `source` (named `file` in the log). A syntax error is itself an error
/// finding with its line and column.
pub fn analyze(file: &str, source: &str) -> Analysis {
    let allocator = Allocator::default();
    let parsed = Parser::new(&allocator, source, SourceType::mjs()).parse();
    let lines = LineIndex::new(source);
    let mut analyzer = Analyzer::new(source, &lines);
    for diagnostic in parsed.diagnostics.errors() {
        let offset = diagnostic.labels.first().map_or(0, |label| label.offset());
        analyzer.report_at(
            offset,
            rules::PARSE_ERROR,
            Severity::Error,
            format!("the module does not parse: {}", diagnostic.message),
        );
    }
    if !parsed.panicked {
        let mut bindings = Bindings::default();
        bindings.visit_program(&parsed.program);
        analyzer.declared = bindings.0;
        analyzer.visit_program(&parsed.program);
        analyzer.check_default_export(&parsed.program);
    }
    let mut findings = analyzer.findings;
    findings.sort_by_key(|f| (f.line, f.column, f.severity));
    let mut seen = HashSet::new();
    findings.retain(|f| seen.insert((f.rule, f.line, f.column)));
    tracing::debug!(
        file,
        findings = findings.len(),
        "analyzed the function's JavaScript"
    );
    Analysis { findings }
}

/// Byte offsets → 1-based line and column (columns count characters).
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(source: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(
            source
                .bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i + 1),
        );
        Self { starts }
    }

    fn position(&self, source: &str, offset: u32) -> (u32, u32) {
        let offset = (offset as usize).min(source.len());
        let line = self.starts.partition_point(|start| *start <= offset).max(1);
        let start = self.starts.get(line - 1).copied().unwrap_or(0);
        let column = source
            .get(start..offset)
            .map_or(offset - start, |text| text.chars().count());
        (
            u32::try_from(line).unwrap_or(u32::MAX),
            u32::try_from(column + 1).unwrap_or(u32::MAX),
        )
    }
}

/// Globals whose members reach everything a function must not.
const GLOBAL_OBJECTS: &[&str] = &["globalThis", "window", "self", "global", "process"];

/// Built-ins every function in a runtime shares: changing them changes the others' world.
const BUILTINS: &[&str] = &[
    "Object",
    "Array",
    "Function",
    "String",
    "Number",
    "Boolean",
    "Symbol",
    "BigInt",
    "Promise",
    "Map",
    "Set",
    "WeakMap",
    "WeakSet",
    "JSON",
    "Math",
    "Reflect",
    "RegExp",
    "Date",
    "Error",
    "TypeError",
    "RangeError",
    "Proxy",
    "ArrayBuffer",
    "DataView",
    "Uint8Array",
    "Int32Array",
    "Float64Array",
    "Intl",
];

fn is_builtin(expression: &Expression) -> bool {
    match expression.without_parentheses() {
        Expression::Identifier(id) => BUILTINS.contains(&id.name.as_str()),
        _ => false,
    }
}

/// `Builtin` or `Builtin.prototype`.
fn is_builtin_or_prototype(expression: &Expression) -> bool {
    let expression = expression.without_parentheses();
    is_builtin(expression)
        || expression
            .as_member_expression()
            .is_some_and(|m| is_prototype_of_builtin(m) || is_builtin(m.object()))
}

fn is_prototype_of_builtin(member: &MemberExpression) -> bool {
    member.static_property_name() == Some("prototype") && is_builtin(member.object())
}

fn is_global_object(expression: &Expression) -> bool {
    matches!(expression.without_parentheses(), Expression::Identifier(id) if GLOBAL_OBJECTS.contains(&id.name.as_str()))
}

fn is_source_text(argument: &Argument) -> bool {
    matches!(
        argument,
        Argument::StringLiteral(_) | Argument::TemplateLiteral(_) | Argument::BinaryExpression(_)
    )
}

/// `true`, or a non-zero number: a loop condition that never ends the loop.
fn always_true(test: Option<&Expression>) -> bool {
    match test.map(Expression::without_parentheses) {
        None => true,
        Some(Expression::BooleanLiteral(b)) => b.value,
        Some(Expression::NumericLiteral(n)) => n.value != 0.0 && !n.value.is_nan(),
        _ => false,
    }
}

/// Whether a loop body can leave the loop: a `return`, `throw` or `yield` anywhere in it (not in
/// nested functions), a labelled `break`, or a plain `break` not inside a nested loop or switch.
fn can_exit(body: &Statement) -> bool {
    #[derive(Default)]
    struct Exits {
        depth: usize,
        found: bool,
    }
    impl<'a> Visit<'a> for Exits {
        fn visit_function_body(&mut self, _: &FunctionBody<'a>) {}
        fn visit_return_statement(&mut self, _: &oxc_ast::ast::ReturnStatement<'a>) {
            self.found = true;
        }
        fn visit_throw_statement(&mut self, _: &oxc_ast::ast::ThrowStatement<'a>) {
            self.found = true;
        }
        fn visit_yield_expression(&mut self, _: &oxc_ast::ast::YieldExpression<'a>) {
            self.found = true;
        }
        fn visit_break_statement(&mut self, it: &oxc_ast::ast::BreakStatement<'a>) {
            if it.label.is_some() || self.depth == 0 {
                self.found = true;
            }
        }
        fn visit_while_statement(&mut self, it: &WhileStatement<'a>) {
            self.depth += 1;
            walk::walk_while_statement(self, it);
            self.depth -= 1;
        }
        fn visit_do_while_statement(&mut self, it: &DoWhileStatement<'a>) {
            self.depth += 1;
            walk::walk_do_while_statement(self, it);
            self.depth -= 1;
        }
        fn visit_for_statement(&mut self, it: &ForStatement<'a>) {
            self.depth += 1;
            walk::walk_for_statement(self, it);
            self.depth -= 1;
        }
        fn visit_for_in_statement(&mut self, it: &oxc_ast::ast::ForInStatement<'a>) {
            self.depth += 1;
            walk::walk_for_in_statement(self, it);
            self.depth -= 1;
        }
        fn visit_for_of_statement(&mut self, it: &oxc_ast::ast::ForOfStatement<'a>) {
            self.depth += 1;
            walk::walk_for_of_statement(self, it);
            self.depth -= 1;
        }
        fn visit_switch_statement(&mut self, it: &oxc_ast::ast::SwitchStatement<'a>) {
            self.depth += 1;
            walk::walk_switch_statement(self, it);
            self.depth -= 1;
        }
    }
    let mut exits = Exits::default();
    exits.visit_statement(body);
    exits.found
}

struct Analyzer<'s> {
    source: &'s str,
    lines: &'s LineIndex,
    findings: Vec<Finding>,
    /// Names the module declares somewhere (variables, parameters, functions, classes): a
    /// reference to one of them is the function's own variable, not the global of that name. A
    /// module-wide approximation of scoping, good enough here because the sandbox has no
    /// `window`, `process` or `self` anyway (this check explains, the sandbox enforces).
    declared: HashSet<String>,
}

/// Collects every binding name of a program.
#[derive(Default)]
struct Bindings(HashSet<String>);

impl<'a> Visit<'a> for Bindings {
    fn visit_binding_identifier(&mut self, it: &oxc_ast::ast::BindingIdentifier<'a>) {
        self.0.insert(it.name.to_string());
    }
}

impl<'s> Analyzer<'s> {
    fn new(source: &'s str, lines: &'s LineIndex) -> Self {
        Self {
            source,
            lines,
            findings: Vec::new(),
            declared: HashSet::new(),
        }
    }

    fn report_at(&mut self, offset: u32, rule: &'static str, severity: Severity, message: String) {
        let (line, column) = self.lines.position(self.source, offset);
        self.findings.push(Finding {
            rule,
            message,
            line,
            column,
            severity,
        });
    }

    fn error(&mut self, offset: u32, rule: &'static str, message: impl Into<String>) {
        self.report_at(offset, rule, Severity::Error, message.into());
    }

    fn warn(&mut self, offset: u32, rule: &'static str, message: impl Into<String>) {
        self.report_at(offset, rule, Severity::Warning, message.into());
    }

    fn check_module(&mut self, offset: u32, specifier: &str, how: &str) {
        if !specifier.starts_with("klf:") {
            self.error(
                offset,
                rules::IMPORT,
                format!(
                    "{how} {specifier:?}: functions may only import `klf:*` modules (such as \"klf:base\"); the sandbox resolves nothing else, and other code reaches the mesh through ctx.call"
                ),
            );
        }
    }

    /// Rules about a member `.name` (static or computed with a literal name) of `object`.
    fn check_member(&mut self, offset: u32, object: &Expression, name: &str, computed: bool) {
        match name {
            "eval" if computed || is_global_object(object) => self.error(
                offset,
                rules::EVAL,
                "`eval` runs code built at run time; the sandbox refuses it and so does the validator",
            ),
            "Function" if is_global_object(object) => self.error(
                offset,
                rules::FUNCTION_CONSTRUCTOR,
                "the `Function` constructor compiles code built at run time, like `eval`; the sandbox refuses it and so does the validator",
            ),
            "constructor" if reaches_code_constructor(object) => self.error(
                offset,
                rules::CONSTRUCTOR_ACCESS,
                "the `.constructor` of a function is the `Function` constructor (or its async/generator kin), a way around the ban on `eval`; it is refused",
            ),
            "__proto__" => self.error(
                offset,
                rules::PROTOTYPE_MUTATION,
                "`__proto__` reaches and rewires prototypes, including the built-ins other code relies on; use Object.getPrototypeOf / Object.create instead",
            ),
            _ => {}
        }
    }

    /// `export default class … extends Base*` (with `Base*` imported from `klf:base`), directly,
    /// as `export default Name` or as `export { Name as default }`.
    fn check_default_export(&mut self, program: &Program) {
        let mut base_names = HashSet::new();
        let mut namespaces = HashSet::new();
        let mut classes: HashMap<&str, &Class> = HashMap::new();
        for statement in &program.body {
            match statement {
                Statement::ImportDeclaration(import)
                    if import.source.value.as_str() == "klf:base" =>
                {
                    for specifier in import.specifiers.iter().flatten() {
                        match specifier {
                            ImportDeclarationSpecifier::ImportSpecifier(s)
                                if s.imported.name().as_str().starts_with("Base") =>
                            {
                                base_names.insert(s.local.name.as_str());
                            }
                            ImportDeclarationSpecifier::ImportNamespaceSpecifier(s) => {
                                namespaces.insert(s.local.name.as_str());
                            }
                            _ => {}
                        }
                    }
                }
                Statement::ClassDeclaration(class) => {
                    if let Some(id) = &class.id {
                        classes.insert(id.name.as_str(), class);
                    }
                }
                _ => {}
            }
        }
        let extends_base = |class: &Class| {
            class
                .heritage
                .as_ref()
                .map(|h| h.expression.without_parentheses())
                .is_some_and(|e| match e {
                    Expression::Identifier(id) => base_names.contains(id.name.as_str()),
                    Expression::StaticMemberExpression(m) => {
                        matches!(m.object.without_parentheses(), Expression::Identifier(ns) if namespaces.contains(ns.name.as_str()))
                            && m.property.name.as_str().starts_with("Base")
                    }
                    _ => false,
                })
        };
        let mut default_at = None;
        for statement in &program.body {
            let (offset, class) = match statement {
                Statement::ExportDefaultDeclaration(export) => (
                    export.span.start,
                    match &export.declaration {
                        ExportDefaultDeclarationKind::ClassDeclaration(class) => Some(&**class),
                        ExportDefaultDeclarationKind::ClassExpression(class) => Some(&**class),
                        ExportDefaultDeclarationKind::Identifier(id) => {
                            classes.get(id.name.as_str()).copied()
                        }
                        _ => None,
                    },
                ),
                Statement::ExportNamedDeclaration(export) => {
                    let Some(specifier) = export
                        .specifiers
                        .iter()
                        .find(|s| s.exported.name().as_str() == "default")
                    else {
                        continue;
                    };
                    (
                        export.span.start,
                        classes.get(specifier.local.name().as_str()).copied(),
                    )
                }
                _ => continue,
            };
            if class.is_some_and(extends_base) {
                return;
            }
            default_at = Some(offset);
        }
        let bases = "BaseFunction or another Base* class imported from \"klf:base\"";
        match default_at {
            Some(offset) => self.error(
                offset,
                rules::DEFAULT_EXPORT,
                format!(
                    "the default export is not a class extending {bases}; the sandbox runs the default export's execute() with the base class's contract"
                ),
            ),
            None => self.error(
                0,
                rules::DEFAULT_EXPORT,
                format!(
                    "the module has no `export default class … extends …` ({bases}); the sandbox runs that class's execute()"
                ),
            ),
        }
    }
}

/// Whether `object.constructor` is a code constructor: `object` is a function, class, prototype,
/// constructor or the result of `Object.getPrototypeOf(…)`.
fn reaches_code_constructor(object: &Expression) -> bool {
    match object.without_parentheses() {
        Expression::FunctionExpression(_)
        | Expression::ArrowFunctionExpression(_)
        | Expression::ClassExpression(_) => true,
        Expression::CallExpression(call) => call
            .callee
            .as_member_expression()
            .is_some_and(|m| m.static_property_name() == Some("getPrototypeOf")),
        other => other
            .as_member_expression()
            .is_some_and(|m| matches!(m.static_property_name(), Some("constructor" | "prototype"))),
    }
}

impl<'a> Visit<'a> for Analyzer<'_> {
    fn visit_identifier_reference(&mut self, it: &IdentifierReference<'a>) {
        let at = it.span.start;
        match it.name.as_str() {
            "eval" => self.error(
                at,
                rules::EVAL,
                "`eval` runs code built at run time; the sandbox refuses it and so does the validator",
            ),
            "Function" if !self.declared.contains("Function") => self.error(
                at,
                rules::FUNCTION_CONSTRUCTOR,
                "the `Function` constructor compiles code built at run time, like `eval`; the sandbox refuses it and so does the validator",
            ),
            "require" if !self.declared.contains("require") => self.error(
                at,
                rules::REQUIRE,
                "`require` loads CommonJS modules, which do not exist in the sandbox; import from \"klf:*\" or call other functions with ctx.call",
            ),
            name if GLOBAL_OBJECTS.contains(&name) && !self.declared.contains(name) => self.error(
                at,
                rules::GLOBAL_OBJECT,
                format!(
                    "`{name}` is the global object (or the host process); functions reach the world only through ctx and their declared capabilities (if it is your own variable, rename it)"
                ),
            ),
            _ => {}
        }
    }

    fn visit_binary_expression(&mut self, it: &BinaryExpression<'a>) {
        // `x instanceof Function` only compares; it cannot build code.
        if it.operator == BinaryOperator::Instanceof && it.right.is_specific_id("Function") {
            self.visit_expression(&it.left);
            return;
        }
        walk::walk_binary_expression(self, it);
    }

    fn visit_static_member_expression(&mut self, it: &StaticMemberExpression<'a>) {
        self.check_member(
            it.property.span.start,
            &it.object,
            it.property.name.as_str(),
            false,
        );
        walk::walk_static_member_expression(self, it);
    }

    fn visit_computed_member_expression(&mut self, it: &ComputedMemberExpression<'a>) {
        if let Some(name) = it.static_property_name() {
            self.check_member(it.expression.span().start, &it.object, name.as_str(), true);
        }
        walk::walk_computed_member_expression(self, it);
    }

    fn visit_call_expression(&mut self, it: &CallExpression<'a>) {
        if let Some(member) = it.callee.without_parentheses().as_member_expression() {
            let property = member.static_property_name();
            if property == Some("constructor") && it.arguments.iter().any(is_source_text) {
                self.error(
                    it.span.start,
                    rules::CONSTRUCTOR_ACCESS,
                    "calling a `.constructor` with source text is how the `Function` constructor is reached around the ban on `eval`; it is refused",
                );
            }
            let on_object = member.object().is_specific_id("Object")
                || member.object().is_specific_id("Reflect");
            if on_object
                && matches!(
                    property,
                    Some("setPrototypeOf" | "defineProperty" | "defineProperties" | "assign")
                )
                && it
                    .arguments
                    .first()
                    .and_then(Argument::as_expression)
                    .is_some_and(is_builtin_or_prototype)
            {
                self.error(
                    it.span.start,
                    rules::PROTOTYPE_MUTATION,
                    format!(
                        "{}(…) on a built-in changes it for every function in the runtime; work on your own objects instead",
                        property.unwrap_or_default()
                    ),
                );
            }
        }
        walk::walk_call_expression(self, it);
    }

    fn visit_new_expression(&mut self, it: &NewExpression<'a>) {
        if it
            .callee
            .without_parentheses()
            .as_member_expression()
            .is_some_and(|m| m.static_property_name() == Some("constructor"))
            && it.arguments.iter().any(is_source_text)
        {
            self.error(
                it.span.start,
                rules::CONSTRUCTOR_ACCESS,
                "`new x.constructor(\"…source…\")` is how the `Function` constructor is reached around the ban on `eval`; it is refused",
            );
        }
        walk::walk_new_expression(self, it);
    }

    fn visit_assignment_expression(&mut self, it: &AssignmentExpression<'a>) {
        if let Some(member) = it.left.as_member_expression()
            && (is_builtin(member.object())
                || member
                    .object()
                    .as_member_expression()
                    .is_some_and(is_prototype_of_builtin))
        {
            self.error(
                it.span.start,
                rules::PROTOTYPE_MUTATION,
                "assigning to a built-in or its prototype changes it for every function in the runtime; work on your own objects instead",
            );
        }
        walk::walk_assignment_expression(self, it);
    }

    fn visit_import_declaration(&mut self, it: &ImportDeclaration<'a>) {
        self.check_module(
            it.source.span.start,
            it.source.value.as_str(),
            "import from",
        );
        walk::walk_import_declaration(self, it);
    }

    fn visit_import_expression(&mut self, it: &ImportExpression<'a>) {
        match it.source.without_parentheses() {
            Expression::StringLiteral(s) => {
                self.check_module(s.span.start, s.value.as_str(), "dynamic import()")
            }
            _ => self.error(
                it.span.start,
                rules::IMPORT,
                "dynamic import() of a computed name cannot be checked; functions may only import `klf:*` modules, by a literal name",
            ),
        }
        walk::walk_import_expression(self, it);
    }

    fn visit_export_all_declaration(&mut self, it: &ExportAllDeclaration<'a>) {
        self.check_module(
            it.source.span.start,
            it.source.value.as_str(),
            "export * from",
        );
        walk::walk_export_all_declaration(self, it);
    }

    fn visit_export_from_declaration(&mut self, it: &ExportFromDeclaration<'a>) {
        self.check_module(
            it.source.span.start,
            it.source.value.as_str(),
            "export … from",
        );
        walk::walk_export_from_declaration(self, it);
    }

    fn visit_with_statement(&mut self, it: &WithStatement<'a>) {
        self.error(
            it.span.start,
            rules::WITH,
            "`with` makes every name in its body ambiguous (and is invalid in modules); name the object's properties explicitly",
        );
        walk::walk_with_statement(self, it);
    }

    fn visit_debugger_statement(&mut self, it: &DebuggerStatement) {
        self.error(
            it.span.start,
            rules::DEBUGGER,
            "`debugger` is a leftover from debugging; deployed functions must not contain it",
        );
    }

    fn visit_while_statement(&mut self, it: &WhileStatement<'a>) {
        if always_true(Some(&it.test)) && !can_exit(&it.body) {
            self.warn(
                it.span.start,
                rules::INFINITE_LOOP,
                "this `while` loop never ends (its condition is always true and nothing inside breaks, returns or throws); the call will run into its deadline",
            );
        }
        walk::walk_while_statement(self, it);
    }

    fn visit_do_while_statement(&mut self, it: &DoWhileStatement<'a>) {
        if always_true(Some(&it.test)) && !can_exit(&it.body) {
            self.warn(
                it.span.start,
                rules::INFINITE_LOOP,
                "this `do … while` loop never ends (its condition is always true and nothing inside breaks, returns or throws); the call will run into its deadline",
            );
        }
        walk::walk_do_while_statement(self, it);
    }

    fn visit_for_statement(&mut self, it: &ForStatement<'a>) {
        if always_true(it.test.as_ref()) && !can_exit(&it.body) {
            self.warn(
                it.span.start,
                rules::INFINITE_LOOP,
                "this `for` loop never ends (it has no condition, or an always-true one, and nothing inside breaks, returns or throws); the call will run into its deadline",
            );
        }
        walk::walk_for_statement(self, it);
    }

    fn visit_array_expression(&mut self, it: &ArrayExpression<'a>) {
        if it.elements.len() > LARGE_ARRAY_ELEMENTS {
            self.warn(
                it.span.start,
                rules::LARGE_LITERAL,
                format!(
                    "an array literal of {} elements (over {LARGE_ARRAY_ELEMENTS}) bloats the package and every instance's memory; put large data in the function's kv store or its input",
                    it.elements.len()
                ),
            );
        }
        walk::walk_array_expression(self, it);
    }

    fn visit_string_literal(&mut self, it: &StringLiteral<'a>) {
        self.check_string(it.span.start, it.value.len());
    }

    fn visit_template_literal(&mut self, it: &TemplateLiteral<'a>) {
        let len: usize = it.quasis.iter().map(|q| q.value.raw.len()).sum();
        self.check_string(it.span.start, len);
        walk::walk_template_literal(self, it);
    }
}

impl Analyzer<'_> {
    fn check_string(&mut self, offset: u32, len: usize) {
        if len > LARGE_STRING_BYTES {
            self.warn(
                offset,
                rules::LARGE_LITERAL,
                format!(
                    "a string literal of {len} bytes (over {LARGE_STRING_BYTES}) bloats the package and every instance's memory; put large data in the function's kv store or its input"
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A realistic, clean function: imports, classes, loops that end, async calls, kv, logs.
    const CLEAN: &str = r#"import { BaseDataProcessor } from "klf:base";

const WINDOW = 3;

function mean(xs) {
  let total = 0;
  for (let i = 0; i < xs.length; i++) {
    total += xs[i];
  }
  return xs.length === 0 ? null : total / xs.length;
}

export default class MarketAnalysis extends BaseDataProcessor {
  async onInitialize() {
    this.window = this.config.window ?? WINDOW;
  }

  async execute(input) {
    const clean = await this.ctx.call("series-cleaner", { xs: input.prices });
    const out = [];
    while (true) {
      if (out.length >= clean.xs.length) break;
      out.push(mean(clean.xs.slice(Math.max(0, out.length - this.window), out.length + 1)));
    }
    const seen = await this.ctx.kv.get("seen");
    await this.ctx.kv.put("seen", (seen ?? 0) + 1);
    this.ctx.log.info(`analysed ${out.length} points`);
    if (!(this.handler instanceof Function) && typeof input !== "object") {
      throw new TypeError("input must be an object");
    }
    return { averages: out, name: this.constructor.name, opportunities: out.filter((x) => x > 1) };
  }
}
"#;

    fn with_base(body: &str) -> String {
        format!(
            "import {{ BaseFunction }} from \"klf:base\";\n{body}\nexport default class F extends BaseFunction {{ async execute(input) {{ return input; }} }}\n"
        )
    }

    fn rules_of(analysis: &Analysis) -> Vec<&'static str> {
        analysis.findings.iter().map(|f| f.rule).collect()
    }

    /// `body` (inside a module that is otherwise clean) yields an error of `rule`.
    fn refused(body: &str, rule: &str) -> Finding {
        let analysis = analyze("main.js", &with_base(body));
        assert!(!analysis.is_clean(), "{body:?} should be refused");
        analysis
            .findings
            .iter()
            .find(|f| f.rule == rule && f.severity == Severity::Error)
            .cloned()
            .unwrap_or_else(|| panic!("{body:?}: no {rule} finding in {:?}", analysis.findings))
    }

    fn accepted(body: &str) {
        let analysis = analyze("main.js", &with_base(body));
        assert!(
            analysis.findings.is_empty(),
            "{body:?} should be clean: {:?}",
            analysis.findings
        );
    }

    #[test]
    fn a_clean_realistic_function_has_no_findings() {
        let analysis = analyze("main.js", CLEAN);
        assert_eq!(analysis.findings, vec![], "{:#?}", analysis.findings);
        assert!(analysis.is_clean());
        for example in ["hello", "moving-average", "series-cleaner"] {
            let path = format!(
                "{}/../../examples/{example}/main.js",
                env!("CARGO_MANIFEST_DIR")
            );
            let source = std::fs::read_to_string(&path).unwrap();
            let analysis = analyze(&path, &source);
            assert!(
                analysis.findings.is_empty(),
                "{example}: {:?}",
                analysis.findings
            );
        }
    }

    #[test]
    fn a_parse_error_is_an_error_with_line_and_column() {
        let analysis = analyze(
            "main.js",
            "import { BaseFunction } from \"klf:base\";\nconst x = ;\n",
        );
        let finding = analysis.errors().next().unwrap();
        assert_eq!(finding.rule, rules::PARSE_ERROR);
        assert_eq!((finding.line, finding.column), (2, 11));
        assert!(
            finding.message.contains("does not parse"),
            "{}",
            finding.message
        );
        assert!(
            finding.to_string().starts_with("2:11: error[parse-error]"),
            "{finding}"
        );
    }

    #[test]
    fn eval_is_refused_directly_and_through_the_global_object() {
        let f = refused("const y = eval(\"1 + 1\");", rules::EVAL);
        assert_eq!((f.line, f.column), (2, 11));
        assert!(
            f.message.contains("the sandbox refuses it"),
            "{}",
            f.message
        );
        refused("const e = eval;", rules::EVAL);
        refused("globalThis.eval(\"1\");", rules::EVAL);
        refused("window.eval(\"1\");", rules::EVAL);
        refused("const k = {}; k[\"eval\"](\"1\");", rules::EVAL);
        refused("const k = {}; k[`eval`](\"1\");", rules::EVAL);
        // A property of one's own object named eval is not the global eval.
        accepted("const o = { evaluate: 1 }; const v = o.evaluate;");
        accepted("const settings = {}; settings.eval = 1;");
    }

    #[test]
    fn the_function_constructor_is_refused() {
        refused(
            "const f = Function(\"return 1\");",
            rules::FUNCTION_CONSTRUCTOR,
        );
        refused(
            "const f = new Function(\"a\", \"return a\");",
            rules::FUNCTION_CONSTRUCTOR,
        );
        refused(
            "const F = Function; new F(\"x\");",
            rules::FUNCTION_CONSTRUCTOR,
        );
        refused(
            "const k = {}; k.y = globalThis.Function;",
            rules::FUNCTION_CONSTRUCTOR,
        );
        accepted("const isFn = (x) => x instanceof Function;");
        accepted("const isFn = (x) => typeof x === \"function\";");
    }

    #[test]
    fn the_constructor_of_functions_is_refused() {
        refused(
            "const F = (() => {}).constructor;",
            rules::CONSTRUCTOR_ACCESS,
        );
        refused(
            "const F = (async function () {}).constructor;",
            rules::CONSTRUCTOR_ACCESS,
        );
        refused(
            "const x = {}; const F = x.constructor.constructor;",
            rules::CONSTRUCTOR_ACCESS,
        );
        refused(
            "const x = {}; x.constructor[\"constructor\"](\"return 1\");",
            rules::CONSTRUCTOR_ACCESS,
        );
        refused(
            "const F = Object.getPrototypeOf(async () => {}).constructor;",
            rules::CONSTRUCTOR_ACCESS,
        );
        refused(
            "const x = []; const F = x.map.prototype.constructor;",
            rules::CONSTRUCTOR_ACCESS,
        );
        refused(
            "const x = []; x.map.constructor(\"return 1\")();",
            rules::CONSTRUCTOR_ACCESS,
        );
        accepted("const x = {}; const name = x.constructor.name;");
        accepted("const x = {}; const same = x.constructor === Object;");
    }

    #[test]
    fn imports_other_than_klf_are_refused_static_dynamic_and_reexported() {
        let source = "import fs from \"node:fs\";\nimport { BaseFunction } from \"klf:base\";\nexport default class F extends BaseFunction {}\n";
        let analysis = analyze("main.js", source);
        let f = analysis.errors().next().unwrap();
        assert_eq!((f.rule, f.line, f.column), (rules::IMPORT, 1, 16));
        assert!(f.message.contains("\"node:fs\""), "{}", f.message);
        refused("const m = await import(\"./other.js\");", rules::IMPORT);
        refused("const name = \"x\"; const m = import(name);", rules::IMPORT);
        refused("export * from \"lodash\";", rules::IMPORT);
        refused("export { chunk } from \"lodash\";", rules::IMPORT);
        accepted("import { BaseDataProcessor } from \"klf:base\";");
        accepted("export { BaseFunction as Base } from \"klf:base\";");
        accepted("const base = import(\"klf:base\");");
    }

    #[test]
    fn require_with_and_debugger_are_refused() {
        refused("const fs = require(\"fs\");", rules::REQUIRE);
        refused("function f() { debugger; }", rules::DEBUGGER);
        // `with` is invalid in modules, but the parser leaves that to semantic checks: the rule
        // names it.
        let f = refused("const o = {}; with (o) { x = 1; }", rules::WITH);
        assert_eq!((f.line, f.column), (2, 15));
        accepted("const required = { fields: [\"a\"] }; const w = required.fields;");
    }

    #[test]
    fn global_objects_are_refused() {
        for name in ["globalThis", "window", "self", "global", "process"] {
            let f = refused(&format!("const g = {name};"), rules::GLOBAL_OBJECT);
            assert!(f.message.contains(name), "{}", f.message);
        }
        refused("const env = process.env.HOME;", rules::GLOBAL_OBJECT);
        accepted("const o = { window: 3, self: 1 }; const w = o.window + o.self;");
        // The function's own variables and parameters that happen to carry those names.
        accepted("const window = 5; const avg = (xs) => xs.slice(-window);");
        accepted("function f(self, process) { return self + process; }");
    }

    #[test]
    fn prototype_changes_of_built_ins_are_refused() {
        refused(
            "const o = {}; o.__proto__ = null;",
            rules::PROTOTYPE_MUTATION,
        );
        refused("const p = [][\"__proto__\"];", rules::PROTOTYPE_MUTATION);
        refused(
            "Object.setPrototypeOf(Array.prototype, null);",
            rules::PROTOTYPE_MUTATION,
        );
        refused(
            "Reflect.setPrototypeOf(Object, null);",
            rules::PROTOTYPE_MUTATION,
        );
        refused(
            "Object.defineProperty(Array.prototype, \"x\", { value: 1 });",
            rules::PROTOTYPE_MUTATION,
        );
        refused("Array.prototype.map = () => 1;", rules::PROTOTYPE_MUTATION);
        refused("JSON.parse = (x) => x;", rules::PROTOTYPE_MUTATION);
        accepted(
            "const proto = { hi() { return 1; } }; const o = Object.setPrototypeOf({}, proto);",
        );
        accepted("const o = Object.assign({}, { a: 1 }); o.b = 2;");
        accepted("const p = Object.getPrototypeOf([]);");
    }

    #[test]
    fn the_default_export_must_extend_a_base_class_from_klf_base() {
        let missing = analyze(
            "main.js",
            "import { BaseFunction } from \"klf:base\";\nexport function f() {}\n",
        );
        assert_eq!(rules_of(&missing), [rules::DEFAULT_EXPORT]);
        assert_eq!(
            (missing.findings[0].line, missing.findings[0].column),
            (1, 1)
        );
        let plain = analyze("main.js", "export default class F { execute() {} }\n");
        assert_eq!(rules_of(&plain), [rules::DEFAULT_EXPORT]);
        let f = &plain.findings[0];
        assert_eq!((f.line, f.column), (1, 1));
        assert!(f.message.contains("Base*"), "{}", f.message);
        let foreign = analyze(
            "main.js",
            "class BaseFunction {}\nexport default class F extends BaseFunction {}\n",
        );
        assert_eq!(rules_of(&foreign), [rules::DEFAULT_EXPORT]);
        let object = analyze(
            "main.js",
            "import { BaseFunction } from \"klf:base\";\nexport default { execute() {} };\n",
        );
        assert_eq!(rules_of(&object), [rules::DEFAULT_EXPORT]);
        assert_eq!(object.findings[0].line, 2);
        for ok in [
            "import { BaseFunction } from \"klf:base\";\nclass F extends BaseFunction {}\nexport default F;\n",
            "import { BasePredictor as P } from \"klf:base\";\nclass F extends P {}\nexport { F as default };\n",
            "import * as base from \"klf:base\";\nexport default class extends base.BaseModelProcessor {}\n",
        ] {
            let analysis = analyze("main.js", ok);
            assert!(
                analysis.findings.is_empty(),
                "{ok}: {:?}",
                analysis.findings
            );
        }
    }

    #[test]
    fn loops_that_never_end_are_warnings() {
        for body in [
            "function f() { while (true) { const x = 1; } }",
            "function f() { for (;;) { } }",
            "function f() { do { } while (1); }",
            // The break leaves the inner loop only; the return sits in a nested function.
            "function f() { while (true) { for (const x of []) { break; } const g = () => { return 1; }; } }",
        ] {
            let analysis = analyze("main.js", &with_base(body));
            assert!(analysis.is_clean(), "a warning does not refuse: {body}");
            assert_eq!(rules_of(&analysis), [rules::INFINITE_LOOP], "{body}");
            assert_eq!(
                analysis.warnings().next().unwrap().severity,
                Severity::Warning
            );
        }
        accepted("function f(q) { while (true) { if (q.length === 0) break; q.pop(); } }");
        accepted("function f(q) { for (;;) { if (q.length === 0) return q; q.pop(); } }");
        accepted("function f(q) { while (true) { throw new Error(\"stop\"); } }");
        accepted("function* ids() { let i = 0; for (;;) { yield i++; } }");
        accepted("function f(q) { outer: while (true) { for (;;) { break outer; } } }");
        accepted("function f(q) { let i = 0; while (i < 10) { i++; } }");
    }

    #[test]
    fn very_large_literals_are_warnings() {
        let big = format!(
            "const table = [{}];",
            vec!["1"; LARGE_ARRAY_ELEMENTS + 1].join(",")
        );
        let analysis = analyze("main.js", &with_base(&big));
        assert!(analysis.is_clean());
        assert_eq!(rules_of(&analysis), [rules::LARGE_LITERAL]);
        assert_eq!(analysis.findings[0].line, 2);
        let text = format!("const text = \"{}\";", "a".repeat(LARGE_STRING_BYTES + 1));
        assert_eq!(
            rules_of(&analyze("main.js", &with_base(&text))),
            [rules::LARGE_LITERAL]
        );
        accepted(&format!("const table = [{}];", vec!["1"; 100].join(",")));
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let analysis = analyze("main.js", &with_base("const s = \"héllo\"; debugger;"));
        let f = analysis.errors().next().unwrap();
        assert_eq!((f.rule, f.line, f.column), (rules::DEBUGGER, 2, 20));
    }
}
