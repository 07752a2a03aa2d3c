//! The model-backed provider (`openai`, and `replay` over recorded exchanges). A chat model picks a
//! recipe and its parameters when one fits (and repairs its `main.js` when tests fail); when none
//! fits, or with `--fresh`, it writes the function itself (see [`super::freeform`]).
//!
//! Nothing the model says is believed until it is checked here: answers are asked for as JSON
//! objects of a fixed shape (a structured output where the server supports it, and checked
//! against the JSON Schema either way), the recipe must exist, parameters must be the recipe's and
//! within their bounds, names must be valid, and a rewritten module must keep the tests embedded in
//! it. An answer that fails — malformed, or cut off by `max_tokens` — is sent back with the exact
//! problem, at most [`MAX_REPAIRS`] times, and then the call fails naming the last problem.
//!
//! Every exchange is bounded: `max_tokens` per stage and the run's deadline (see
//! [`crate::messages::Bounds`]); a streaming server reports progress as tokens arrive.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use klf_router::trace::TARGET as TRACE_TARGET;
use serde_json::{Value, json};
use tracing::{Instrument, debug, warn};

use super::freeform::{self, RequirementAnswer};
use super::{
    Costed, Deployed, Interpretation, Provider, ProviderError, offline, render_requirement,
    requirement_for,
};
use crate::agents::RunContext;
use crate::ingredients::kinds::{Body, Recipe, coerce};
use crate::ingredients::{Kind, Library, schema};
use crate::messages::{Attempt, GeneratedCode, NoMatch, TechnicalRequirement, TestCase};
use futures_util::future::BoxFuture;
use klf_model::{Message, ModelProvider, ModelRequest, Usage};

/// How many times an unusable answer is sent back before the call fails.
pub const MAX_REPAIRS: u32 = 2;
/// How long one exchange (the provider's own retries included) may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(120);
/// How many of the closest recipes a "no match" lists.
const CLOSEST: usize = 3;
/// The module a repair round may rewrite; nothing else of the package.
const MODULE: &str = "main.js";
/// Lines of the rendered module that hold the acceptance tests and schemas. The model sees them
/// elided (`static tests = "@kept";`), must keep the elided lines, and klf puts the originals back:
/// the generator cannot edit the acceptance tests, and the prompt stays small (the tests of a
/// recipe run to tens of kilobytes).
const PROTECTED: [&str; 4] = [
    "static inputSchema =",
    "static outputSchema =",
    "static tests =",
    "static acceptedCases =",
];

/// The shape of the interpreter's answer.
fn interpret_schema() -> Value {
    json!({
        "type": "object",
        "required": ["recipe"],
        "additionalProperties": false,
        "properties": {
            "recipe": { "type": ["string", "null"] },
            "params": { "type": "object" },
            "function": { "type": ["string", "null"] },
            "reason": { "type": "string" }
        }
    })
}

/// The shape of a repair round's answer.
fn generate_schema() -> Value {
    json!({
        "type": "object",
        "required": [MODULE],
        "additionalProperties": false,
        "properties": { MODULE: { "type": "string", "minLength": 1 } }
    })
}

/// A provider whose thinking is done by a chat model.
#[derive(Clone)]
pub struct ModelBacked {
    pub model: Arc<dyn ModelProvider>,
    /// `openai` or `replay`.
    pub name: &'static str,
}

impl std::fmt::Debug for ModelBacked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelBacked")
            .field("model", &self.model.describe())
            .field("name", &self.name)
            .finish()
    }
}

/// What the interpreter's answer says, once checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Interpreted {
    Recipe {
        recipe: String,
        params: BTreeMap<String, Value>,
        function: Option<String>,
        reason: String,
    },
    NoMatch {
        reason: String,
    },
}

/// The conversation of one call: messages so far, tokens spent, the model that answered.
struct Conversation {
    messages: Vec<Message>,
    usage: Usage,
    model: String,
}

impl Conversation {
    fn new(system: String, user: String) -> Self {
        Self {
            messages: vec![
                Message {
                    role: "system".into(),
                    content: system,
                },
                Message {
                    role: "user".into(),
                    content: user,
                },
            ],
            usage: Usage::default(),
            model: String::new(),
        }
    }

    /// Asks until `check` accepts the answer, sending each problem back (an answer cut off by
    /// `max_tokens` is one), at most [`MAX_REPAIRS`] times. `stage` picks the run's `max_tokens`;
    /// `schema` is the answer's shape, asked for as a structured output.
    async fn ask<T>(
        &mut self,
        model: &dyn ModelProvider,
        cx: &RunContext,
        stage: &str,
        schema: Value,
        check: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ProviderError> {
        let max_tokens = cx.bounds.max_tokens(stage);
        let mut last = String::new();
        for attempt in 0..=MAX_REPAIRS {
            let left = cx.bounds.remaining();
            if left.is_zero() {
                return Err(ProviderError::Model(format!(
                    "the run's deadline passed before the {stage} exchange could finish{}; give \
                     it longer with --deadline",
                    if last.is_empty() {
                        String::new()
                    } else {
                        format!(" (last problem: {last})")
                    }
                ))
                .spent(self.usage));
            }
            let request = ModelRequest {
                messages: self.messages.clone(),
                max_tokens: Some(max_tokens),
                temperature: Some(0.0),
                json: true,
                schema: Some(schema.clone()),
            };
            let timeout = EXCHANGE_TIMEOUT.min(left);
            // One span per exchange, named and attributed by the OpenTelemetry GenAI
            // conventions; no prompt or answer text.
            let span = tracing::info_span!(
                target: TRACE_TARGET,
                "chat",
                klf.node = %cx.node,
                gen_ai.operation.name = "chat",
                gen_ai.provider.name = "openai",
                gen_ai.request.model = %model.model_name(),
                gen_ai.request.max_tokens = max_tokens,
                gen_ai.request.temperature = 0.0,
                gen_ai.response.model = tracing::field::Empty,
                gen_ai.response.finish_reasons = tracing::field::Empty,
                gen_ai.usage.input_tokens = tracing::field::Empty,
                gen_ai.usage.output_tokens = tracing::field::Empty,
                chef.stage = stage,
                chef.attempt = attempt,
                error.kind = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            );
            klf_router::trace::adopt(&span, cx.trace_parent.as_deref());
            let exchange = async {
                match &cx.progress {
                    Some(progress) => {
                        model
                            .complete_streaming(request, timeout, progress.clone())
                            .await
                    }
                    None => model.complete(request, timeout).await,
                }
            };
            let reply = exchange.instrument(span.clone()).await;
            match &reply {
                Ok(reply) => {
                    span.record("gen_ai.response.model", reply.model.as_str())
                        .record("gen_ai.usage.input_tokens", reply.usage.input_tokens)
                        .record("gen_ai.usage.output_tokens", reply.usage.output_tokens);
                    if let Some(reason) = &reply.finish_reason {
                        span.record("gen_ai.response.finish_reasons", reason.as_str());
                    }
                }
                Err(_) => {
                    span.record("error.kind", "model_error")
                        .record("otel.status_code", "ERROR");
                }
            }
            drop(span);
            let reply = reply.map_err(|e| {
                let error = if cx.bounds.remaining().is_zero() {
                    ProviderError::Model(format!(
                        "the run's deadline passed during the {stage} exchange ({e}); give it \
                         longer with --deadline"
                    ))
                } else {
                    ProviderError::Model(e.to_string())
                };
                error.spent(self.usage)
            })?;
            self.usage.input_tokens += reply.usage.input_tokens;
            self.usage.output_tokens += reply.usage.output_tokens;
            if !reply.model.is_empty() {
                self.model = reply.model.clone();
            }
            let checked = if reply.truncated() {
                Err(format!(
                    "the answer was cut off at the limit of {max_tokens} tokens; answer again, \
                     shorter (no comments, no explanations)"
                ))
            } else {
                check(&reply.text)
            };
            match checked {
                Ok(value) => return Ok(value),
                Err(problem) => {
                    warn!(attempt, stage, %problem, "the model's answer is unusable");
                    self.messages.push(Message {
                        role: "assistant".into(),
                        content: reply.text,
                    });
                    self.messages.push(Message {
                        role: "user".into(),
                        content: repair_prompt(&problem),
                    });
                    last = problem;
                }
            }
        }
        Err(ProviderError::Unusable(format!(
            "after {} answers ({MAX_REPAIRS} repairs), still: {last}",
            MAX_REPAIRS + 1
        ))
        .spent(self.usage))
    }

    fn costed<T>(self, value: T) -> Costed<T> {
        Costed {
            value,
            usage: self.usage,
            model: self.model,
        }
    }
}

/// What an unusable answer is sent back with.
pub fn repair_prompt(problem: &str) -> String {
    format!("your answer is unusable: {problem}; answer again with only the JSON object")
}

/// The answer's JSON: an object, checked against `schema`. A Markdown code fence around it is
/// tolerated (models add them even when asked for JSON); nothing else is.
pub fn parse_object(text: &str, schema: &Value) -> Result<serde_json::Map<String, Value>, String> {
    let trimmed = text.trim();
    let unfenced = trimmed
        .strip_prefix("```json")
        .or_else(|| trimmed.strip_prefix("```"))
        .and_then(|rest| rest.trim_end().strip_suffix("```"))
        .unwrap_or(trimmed);
    let value: Value = serde_json::from_str(unfenced).map_err(|e| {
        format!(
            "it is not JSON ({e}); it starts with {:?}",
            unfenced.chars().take(40).collect::<String>()
        )
    })?;
    schema::validate(schema, &value)
        .map_err(|e| format!("it does not have the shape asked for: {e}"))?;
    match value {
        Value::Object(object) => Ok(object),
        other => Err(format!(
            "it is {}, not a JSON object",
            crate::ingredients::kinds::json_type(&other)
        )),
    }
}

fn recipes(library: &Library) -> Vec<&Recipe> {
    library
        .list(Some(Kind::Recipe))
        .filter_map(|ingredient| match &ingredient.body {
            Body::Recipe(recipe) => Some(recipe.as_ref()),
            _ => None,
        })
        .collect()
}

/// Checks the interpreter's answer against the library.
pub fn check_interpretation(text: &str, library: &Library) -> Result<Interpreted, String> {
    let object = parse_object(text, &interpret_schema())?;
    let reason = object
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .trim()
        .to_string();
    let Some(name) = object.get("recipe").and_then(Value::as_str) else {
        return Ok(Interpreted::NoMatch { reason });
    };
    let all = recipes(library);
    let Some(recipe) = all.iter().find(|r| r.name == name) else {
        let names: Vec<&str> = all.iter().map(|r| r.name.as_str()).collect();
        return Err(format!(
            "there is no recipe named {name:?}; the recipes are {} (or null when none fits)",
            names.join(", ")
        ));
    };
    let mut params = BTreeMap::new();
    if let Some(Value::Object(given)) = object.get("params") {
        for (key, value) in given {
            let Some(p) = recipe.parameters.iter().find(|p| &p.name == key) else {
                let known: Vec<&str> = recipe.parameters.iter().map(|p| p.name.as_str()).collect();
                return Err(format!(
                    "{key:?} is not a parameter of {name}; its parameters are {}",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ));
            };
            if value.is_null() {
                continue; // null: leave it at its default
            }
            let value = coerce(p, value).map_err(|e| format!("parameter {key:?}: {e}"))?;
            params.insert(key.clone(), value);
        }
    }
    if let Some(p) = recipe
        .parameters
        .iter()
        .find(|p| p.default.is_none() && !params.contains_key(&p.name))
    {
        return Err(format!(
            "parameter {:?} of {name} has no default and must be set ({})",
            p.name, p.description
        ));
    }
    let function = match object.get("function").and_then(Value::as_str) {
        Some(f) if !klf_functions::package::is_valid_name(f) => {
            return Err(format!(
                "the function name {f:?} is not valid: 1 to 64 characters of a-z, 0-9 and '-', \
                 starting with a letter (or null for the recipe's name)"
            ));
        }
        other => other.map(str::to_string),
    };
    Ok(Interpreted::Recipe {
        recipe: recipe.name.clone(),
        params,
        function,
        reason,
    })
}

/// What an elided line's value becomes.
const KEPT: &str = "\"@kept\";";

/// A module with its protected lines elided, and how to put them back.
#[derive(Debug, Clone, PartialEq)]
pub struct Elided {
    /// What the model is shown.
    pub module: String,
    /// (elided line, trimmed; the original line) for each protected line.
    pub kept: Vec<(String, String)>,
}

/// Elides the protected lines of `module`.
pub fn elide(module: &str) -> Elided {
    let mut kept = Vec::new();
    let mut shown = Vec::new();
    for line in module.lines() {
        let trimmed = line.trim_start();
        match PROTECTED.iter().find(|p| trimmed.starts_with(*p)) {
            Some(prefix) => {
                let indent = &line[..line.len() - trimmed.len()];
                let elided = format!("{prefix} {KEPT}");
                shown.push(format!("{indent}{elided}"));
                kept.push((elided, line.to_string()));
            }
            None => shown.push(line.to_string()),
        }
    }
    let mut module_shown = shown.join("\n");
    if module.ends_with('\n') {
        module_shown.push('\n');
    }
    Elided {
        module: module_shown,
        kept,
    }
}

/// Checks a repair round's answer: only `main.js`, which keeps each elided line exactly once;
/// answers the module with the originals of the elided lines put back.
pub fn check_module(text: &str, elided: &Elided) -> Result<String, String> {
    let value: Result<Value, _> = serde_json::from_str(text.trim());
    if let Ok(Value::Object(object)) = &value {
        let others: Vec<&str> = object
            .keys()
            .map(String::as_str)
            .filter(|k| *k != MODULE)
            .collect();
        if !others.is_empty() {
            return Err(format!(
                "only {MODULE} may be changed, but the answer also has {}",
                others.join(", ")
            ));
        }
    }
    let object = parse_object(text, &generate_schema())?;
    let source = object
        .get(MODULE)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{MODULE} is not a string"))?;
    let mut lines: Vec<String> = source.lines().map(str::to_string).collect();
    for (marker, original) in &elided.kept {
        let at: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.trim() == marker)
            .map(|(i, _)| i)
            .collect();
        match at.as_slice() {
            [i] => lines[*i] = original.clone(),
            [] => {
                return Err(format!(
                    "the line `{marker}` is missing or changed: keep each `\"@kept\"` line \
                     exactly as it is (klf puts the embedded tests and schemas back there)"
                ));
            }
            _ => {
                return Err(format!(
                    "the line `{marker}` appears {} times; keep it exactly once",
                    at.len()
                ));
            }
        }
    }
    let mut module = lines.join("\n");
    if source.ends_with('\n') {
        module.push('\n');
    }
    Ok(module)
}

/// The system prompt of the interpreter: the recipes and the answer's contract.
pub fn interpret_prompt(library: &Library) -> String {
    let mut prompt = String::from(
        "You map a user's request for a serverless function to one of the recipes below, and \
         read the recipe's parameters out of the request.\n\
         Answer with only a JSON object: {\"recipe\": NAME or null, \"params\": {PARAMETER: \
         VALUE}, \"function\": NAME or null, \"reason\": \"...\"}.\n\
         - recipe: the name of the recipe that does what is asked, or null when none does \
         (never a recipe that does something else).\n\
         - params: only parameters the request states, with values within their ranges; the \
         others keep their defaults.\n\
         - function: the name the request gives the function (a-z, 0-9, '-'), or null.\n\
         - reason: one sentence on why.\n\nRecipes:\n",
    );
    for recipe in recipes(library) {
        let _ = writeln!(prompt, "\n## {} — {}", recipe.name, recipe.title);
        if !recipe.description.is_empty() {
            let _ = writeln!(prompt, "{}", recipe.description);
        }
        for p in &recipe.parameters {
            let mut line = format!("- {} ({})", p.name, p.kind.as_str());
            match (p.min, p.max) {
                (Some(min), Some(max)) => {
                    let _ = write!(line, ", {min} to {max}");
                }
                (Some(min), None) => {
                    let _ = write!(line, ", at least {min}");
                }
                (None, Some(max)) => {
                    let _ = write!(line, ", at most {max}");
                }
                (None, None) => {}
            }
            if let Some(choices) = &p.choices {
                let choices: Vec<String> = choices.iter().map(Value::to_string).collect();
                let _ = write!(line, ", one of {}", choices.join(", "));
            }
            match &p.default {
                Some(default) => {
                    let _ = write!(line, ", default {default}");
                }
                None => line.push_str(", required"),
            }
            if !p.description.is_empty() {
                let _ = write!(line, ": {}", p.description);
            }
            let _ = writeln!(prompt, "{line}");
        }
    }
    prompt
}

/// The system prompt of a repair round.
pub const GENERATE_PROMPT: &str = "You repair the JavaScript module (main.js) of a KLF function. \
    It is an ES module whose default export is a class extending a base class of \"klf:base\"; it \
    may import only \"klf:*\" modules, and may not use eval, Function or dynamic import. Lines such as \
    `static tests = \"@kept\";` stand for the acceptance tests and schemas, which klf puts back: keep \
    each of them exactly as it is, once. Answer with only a JSON object: {\"main.js\": \"the whole \
    corrected module\"}.";

/// The user message of a repair round: the requirement, the module and what went wrong.
pub fn generate_message(
    requirement: &TechnicalRequirement,
    module: &str,
    feedback: &[String],
) -> String {
    let summary = json!({
        "goal": requirement.goal,
        "recipe": requirement.recipe,
        "function": requirement.function,
        "params": requirement.params,
        "input_schema": requirement.input_schema,
        "output_schema": requirement.output_schema,
        "steps": requirement.steps,
    });
    let mut message = format!(
        "The technical requirement:\n{}\n\nThe current main.js:\n```js\n{module}\n```\n\nWhat is wrong with it:\n",
        serde_json::to_string_pretty(&summary).unwrap_or_else(|_| summary.to_string())
    );
    for line in feedback {
        let _ = writeln!(message, "- {line}");
    }
    message
}

impl ModelBacked {
    pub fn new(model: Arc<dyn ModelProvider>, name: &'static str) -> Self {
        Self { model, name }
    }

    async fn interpret_with(
        self,
        request: String,
        library: Arc<Library>,
        deployed: Vec<Deployed>,
        cx: RunContext,
    ) -> Result<Costed<Interpretation>, ProviderError> {
        let ranked = offline::rank(&request, &library);
        let mut usage = Usage::default();
        let mut model = String::new();
        let mut recipe_reason = None;
        if !cx.bounds.fresh {
            let mut conversation = Conversation::new(interpret_prompt(&library), request.clone());
            let answer = conversation
                .ask(
                    self.model.as_ref(),
                    &cx,
                    "interpret",
                    interpret_schema(),
                    |text| check_interpretation(text, &library),
                )
                .await?;
            match answer {
                Interpreted::NoMatch { reason } => {
                    debug!(%reason, "no recipe fits: the model writes the function itself");
                    usage = conversation.usage;
                    model = conversation.model;
                    recipe_reason = Some(reason);
                }
                Interpreted::Recipe {
                    recipe,
                    params,
                    function,
                    reason,
                } => {
                    let Ok((_, chosen)) = library.recipe(&recipe) else {
                        // check_interpretation found it in this same library.
                        return Err(ProviderError::Unusable(format!(
                            "the recipe {recipe} is not in the library"
                        )));
                    };
                    // The model's own confidence is not asked for, and would not be trusted: a
                    // model states certainty it does not have. The answer is fully sure (1.0) only
                    // when the offline ranking independently finds the recipe among its
                    // candidates (the request shares words with it); otherwise 0.5 — valid, but
                    // vouched for by the model alone.
                    let corroborated = ranked.iter().any(|(c, _)| c.recipe == recipe);
                    let confidence = if corroborated { 1.0 } else { 0.5 };
                    debug!(%recipe, corroborated, %reason, "the model chose a recipe");
                    let extracted = params.keys().cloned().collect();
                    let requirement = requirement_for(
                        &request,
                        chosen,
                        function,
                        params,
                        extracted,
                        confidence,
                        ranked
                            .into_iter()
                            .map(|(c, _)| c)
                            .filter(|c| c.recipe != recipe)
                            .take(CLOSEST)
                            .collect(),
                    );
                    return Ok(
                        conversation.costed(Interpretation::Requirement(Box::new(requirement)))
                    );
                }
            }
        }
        // No recipe fits (or --fresh): the model writes the requirement itself.
        let mut conversation = Conversation::new(
            freeform::requirement_prompt(),
            freeform::requirement_message(&request, &deployed),
        );
        conversation.usage = usage;
        conversation.model = model;
        let answer = conversation
            .ask(
                self.model.as_ref(),
                &cx,
                "interpret",
                freeform::requirement_schema(),
                |text| freeform::check_requirement(text, &request, &deployed),
            )
            .await?;
        let interpretation = match answer {
            RequirementAnswer::Requirement(mut requirement) => {
                requirement.alternatives =
                    ranked.into_iter().map(|(c, _)| c).take(CLOSEST).collect();
                Interpretation::Requirement(requirement)
            }
            RequirementAnswer::Refused(reason) => Interpretation::NoMatch(NoMatch {
                request: request.clone(),
                reason: match recipe_reason {
                    Some(recipe) if !recipe.is_empty() => format!("{reason} ({recipe})"),
                    _ => reason,
                },
                closest: ranked.into_iter().take(CLOSEST).map(|(c, _)| c).collect(),
            }),
        };
        Ok(conversation.costed(interpretation))
    }

    async fn write_tests_with(
        self,
        requirement: TechnicalRequirement,
        cx: RunContext,
    ) -> Result<Costed<Vec<TestCase>>, ProviderError> {
        let mut conversation = Conversation::new(
            freeform::tests_prompt(),
            freeform::tests_message(&requirement),
        );
        let tests = conversation
            .ask(
                self.model.as_ref(),
                &cx,
                "write-tests",
                freeform::tests_schema(),
                |text| freeform::check_tests(text, &requirement),
            )
            .await?;
        Ok(conversation.costed(tests))
    }

    async fn generate_with(
        self,
        requirement: TechnicalRequirement,
        attempt: Attempt,
        library: Arc<Library>,
        cx: RunContext,
    ) -> Result<Costed<GeneratedCode>, ProviderError> {
        if requirement.is_freeform() {
            let mut conversation = Conversation::new(
                freeform::code_prompt(&library),
                freeform::code_message(&requirement, &attempt),
            );
            let round = attempt.round;
            let code = conversation
                .ask(
                    self.model.as_ref(),
                    &cx,
                    "generate",
                    freeform::code_schema(),
                    |text| freeform::check_code(text, &requirement, round),
                )
                .await?;
            return Ok(conversation.costed(code));
        }
        let mut code = render_requirement(&requirement, attempt.round, &library)?;
        if attempt.feedback.is_empty() {
            // The rendered recipe is reviewed code: the first round uses it as it is.
            return Ok(Costed::free(code));
        }
        // A repair starts from the previous round's module (the rendered one the first time).
        let module = attempt
            .previous
            .as_ref()
            .and_then(|p| p.files.get(MODULE))
            .or_else(|| code.files.get(MODULE));
        let Some(scaffold) = module.map(|m| elide(m)) else {
            return Err(ProviderError::Render {
                recipe: requirement.recipe.clone(),
                message: format!("the rendered package has no {MODULE} to repair"),
            });
        };
        let mut conversation = Conversation::new(
            GENERATE_PROMPT.to_string(),
            generate_message(&requirement, &scaffold.module, &attempt.feedback),
        );
        let module = conversation
            .ask(
                self.model.as_ref(),
                &cx,
                "generate",
                generate_schema(),
                |text| check_module(text, &scaffold),
            )
            .await?;
        code.files.insert(MODULE.to_string(), module);
        Ok(conversation.costed(code))
    }
}

impl Provider for ModelBacked {
    fn name(&self) -> &'static str {
        self.name
    }

    fn interpret(
        &self,
        request: String,
        library: Arc<Library>,
        deployed: Vec<Deployed>,
        cx: RunContext,
    ) -> BoxFuture<'static, Result<Costed<Interpretation>, ProviderError>> {
        Box::pin(self.clone().interpret_with(request, library, deployed, cx))
    }

    fn write_tests(
        &self,
        requirement: TechnicalRequirement,
        cx: RunContext,
    ) -> BoxFuture<'static, Result<Costed<Vec<TestCase>>, ProviderError>> {
        Box::pin(self.clone().write_tests_with(requirement, cx))
    }

    fn generate(
        &self,
        requirement: TechnicalRequirement,
        attempt: Attempt,
        library: Arc<Library>,
        cx: RunContext,
    ) -> BoxFuture<'static, Result<Costed<GeneratedCode>, ProviderError>> {
        Box::pin(
            self.clone()
                .generate_with(requirement, attempt, library, cx),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn library() -> Library {
        Library::shipped()
    }

    fn ok(text: &str) -> Interpreted {
        check_interpretation(text, &library()).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn problem(text: &str) -> String {
        match check_interpretation(text, &library()) {
            Ok(answer) => panic!("{text} was accepted: {answer:?}"),
            Err(problem) => problem,
        }
    }

    #[test]
    fn a_good_answer_is_checked_and_coerced() {
        let answer = ok(
            r#"{"recipe": "market-analysis", "params": {"top": 3, "window": "30", "buy_above": null}, "function": "market-scout", "reason": "stocks"}"#,
        );
        let Interpreted::Recipe {
            recipe,
            params,
            function,
            reason,
        } = answer
        else {
            panic!("no recipe");
        };
        assert_eq!(recipe, "market-analysis");
        assert_eq!(params.get("top"), Some(&json!(3)));
        assert_eq!(params.get("window"), Some(&json!(30)));
        assert!(!params.contains_key("buy_above"), "null keeps the default");
        assert_eq!(function.as_deref(), Some("market-scout"));
        assert_eq!(reason, "stocks");
        // Only `recipe` is required; a code fence is tolerated.
        assert!(matches!(
            ok("```json\n{\"recipe\": \"csv-to-json\"}\n```"),
            Interpreted::Recipe { .. }
        ));
    }

    #[test]
    fn null_recipe_is_no_match_with_the_models_reason() {
        assert_eq!(
            ok(
                r#"{"recipe": null, "params": {}, "function": null, "reason": "poetry is not a function"}"#
            ),
            Interpreted::NoMatch {
                reason: "poetry is not a function".into()
            }
        );
    }

    #[test]
    fn invalid_answers_name_the_problem() {
        for (text, expected) in [
            ("Sure! Here is the JSON", "it is not JSON"),
            ("[1, 2]", "does not have the shape"),
            (r#"{"params": {}}"#, "\"recipe\" is a required property"),
            (r#"{"recipe": "x", "confidence": 1}"#, "confidence"),
            (r#"{"recipe": 7}"#, "does not have the shape"),
            (
                r#"{"recipe": "stock-picker"}"#,
                "there is no recipe named \"stock-picker\"; the recipes are ",
            ),
            (
                r#"{"recipe": "market-analysis", "params": {"horizon": 3}}"#,
                "\"horizon\" is not a parameter of market-analysis; its parameters are ",
            ),
            (
                r#"{"recipe": "market-analysis", "params": {"top": 500}}"#,
                "parameter \"top\": 500 is above the maximum 50",
            ),
            (
                r#"{"recipe": "market-analysis", "params": {"top": "many"}}"#,
                "parameter \"top\": \"many\" is not an integer",
            ),
            (
                r#"{"recipe": "market-analysis", "function": "Market Scout"}"#,
                "the function name \"Market Scout\" is not valid",
            ),
        ] {
            let problem = problem(text);
            assert!(problem.contains(expected), "{text}: {problem}");
        }
    }

    #[test]
    fn the_prompt_lists_recipes_with_parameter_types_ranges_and_defaults() {
        let prompt = interpret_prompt(&library());
        assert!(
            prompt.contains("## market-analysis — Analyze market data and find opportunities"),
            "{prompt}"
        );
        assert!(
            prompt.contains("- top (integer), 1 to 50, default 5: "),
            "{prompt}"
        );
        assert!(prompt.contains("## csv-to-json"), "{prompt}");
        assert!(prompt.contains("\"recipe\": NAME or null"), "{prompt}");
    }

    const SCAFFOLD: &str = "class A {\n  static inputSchema = {\"type\":\"object\"};\n  static tests = [1];\n  run() { return 1; }\n}\n";

    #[test]
    fn protected_lines_are_elided_and_put_back() {
        let elided = elide(SCAFFOLD);
        assert_eq!(
            elided.module,
            "class A {\n  static inputSchema = \"@kept\";\n  static tests = \"@kept\";\n  run() { return 1; }\n}\n"
        );
        let fixed = elided.module.replace("return 1", "return 2");
        let answer = json!({ "main.js": fixed }).to_string();
        assert_eq!(
            check_module(&answer, &elided),
            Ok(SCAFFOLD.replace("return 1", "return 2"))
        );
    }

    #[test]
    fn a_repaired_module_is_main_js_only_and_keeps_the_tests() {
        let elided = elide(SCAFFOLD);
        let fixed = elided.module.replace("return 1", "return 2");
        let answer = json!({ "main.js": fixed, "klf.toml": "name = \"x\"" }).to_string();
        let problem = check_module(&answer, &elided).unwrap_err();
        assert!(
            problem.contains("only main.js may be changed, but the answer also has klf.toml"),
            "{problem}"
        );

        let cheating = elided
            .module
            .replace("static tests = \"@kept\";", "static tests = [];");
        let problem =
            check_module(&json!({ "main.js": cheating }).to_string(), &elided).unwrap_err();
        assert!(
            problem.contains("the line `static tests = \"@kept\";` is missing or changed"),
            "{problem}"
        );
        let twice = format!("{}  static tests = \"@kept\";\n", elided.module);
        let problem = check_module(&json!({ "main.js": twice }).to_string(), &elided).unwrap_err();
        assert!(problem.contains("appears 2 times"), "{problem}");

        for (text, expected) in [
            ("module.exports = 1", "it is not JSON"),
            (r#"{"main.js": ""}"#, "does not have the shape"),
            (r#"{"code": "x"}"#, "only main.js may be changed"),
        ] {
            let problem = check_module(text, &elided).unwrap_err();
            assert!(problem.contains(expected), "{text}: {problem}");
        }
    }

    #[test]
    fn the_repair_message_carries_requirement_module_and_feedback() {
        let Interpretation::Requirement(requirement) =
            offline::interpret("Analyze market data and find opportunities", &library())
        else {
            panic!("no requirement");
        };
        let message = generate_message(
            &requirement,
            SCAFFOLD,
            &["test people: expected 2, got 1".into()],
        );
        assert!(
            message.contains("\"recipe\": \"market-analysis\""),
            "{message}"
        );
        assert!(message.contains("run() { return 1; }"), "{message}");
        assert!(
            message.contains("- test people: expected 2, got 1"),
            "{message}"
        );
    }
}
