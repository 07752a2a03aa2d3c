//! The kinds of ingredient and the schema of each: serde types that refuse unknown fields, plus the
//! checks serde cannot express (ranges, references inside a file, consistency). Every check names
//! the field it is about, as a dotted path from the top of the file.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{IngredientError, is_valid_name};

/// The kind of an ingredient: the `kind` field of its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Model,
    DataFlow,
    Api,
    Security,
    Testing,
    Recipe,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Model,
        Kind::DataFlow,
        Kind::Api,
        Kind::Security,
        Kind::Testing,
        Kind::Recipe,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Model => "model",
            Kind::DataFlow => "data-flow",
            Kind::Api => "api",
            Kind::Security => "security",
            Kind::Testing => "testing",
            Kind::Recipe => "recipe",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an ingredient came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "kebab-case")]
pub enum Origin {
    /// Embedded in the binary from `actors/chef/ingredients/`.
    Shipped,
    /// A user folder (`klf up --ingredients DIR`, or `<data>/ingredients`).
    User { folder: String },
}

/// One loaded, validated ingredient.
#[derive(Debug, Clone, Serialize)]
pub struct Ingredient {
    pub name: String,
    pub kind: Kind,
    pub description: String,
    /// The file it was read from (`ingredients/…` for shipped ones).
    pub file: String,
    pub origin: Origin,
    /// The file of the ingredient this one replaces (a user ingredient named like a shipped one, or
    /// like one of an earlier user folder).
    pub overrides: Option<String>,
    pub body: Body,
}

/// The kind-specific content.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Body {
    Model(ModelConfig),
    DataFlow(DataFlow),
    Api(ApiTemplate),
    Security(SecurityTemplate),
    Testing(TestingTemplate),
    Recipe(Box<Recipe>),
}

impl Body {
    /// The content as JSON, as templates and the API see it.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Names of other ingredients this one refers to.
    pub fn references(&self) -> Vec<&str> {
        match self {
            Body::Recipe(r) => r.uses.iter().map(String::as_str).collect(),
            _ => Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Model configurations

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Provider {
    /// Any OpenAI-compatible chat-completions endpoint.
    Openai,
    /// A model computed inside the function (linear or logistic), with no provider at all.
    Local,
    /// No network: the chef's offline mode.
    Offline,
    /// Recorded exchanges, for tests.
    Replay,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelParameters {
    pub temperature: Option<f64>,
    pub max_tokens: Option<u64>,
    pub top_p: Option<f64>,
    /// Ask for JSON output (structured outputs).
    pub json: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Price of 1 000 input tokens.
    pub input_per_1k: f64,
    /// Price of 1 000 output tokens.
    pub output_per_1k: f64,
    #[serde(default = "usd")]
    pub currency: String,
}

fn usd() -> String {
    "USD".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LocalModelKind {
    Linear,
    Logistic,
}

/// A model `BaseModelProcessor` computes itself: `score = bias + Σ weight·feature` (logistic: the
/// sigmoid of it), labelled when `threshold` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalModel {
    pub kind: LocalModelKind,
    pub weights: BTreeMap<String, f64>,
    #[serde(default)]
    pub bias: f64,
    pub threshold: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub provider: Provider,
    pub model: String,
    pub base_url: Option<String>,
    /// Environment variable holding the API key (never the key itself).
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub parameters: ModelParameters,
    pub price: Option<Price>,
    pub local: Option<LocalModel>,
}

// ---------------------------------------------------------------------------------------------
// Data-flow templates

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Engine {
    /// Steps of `BaseDataProcessor.run`.
    DataProcessor,
    /// Steps of `BaseWorkflowEngine.run`.
    Workflow,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataFlow {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub engine: Engine,
    /// The steps, as the base class takes them (checked per engine by [`check_data_flow`]).
    pub steps: Vec<Value>,
    /// The workflow's output template (`$steps.<id>.output…`), workflow engine only.
    pub output: Option<Value>,
}

/// One `BaseDataProcessor` step (only used to check the shape of a data-flow's steps).
#[derive(Debug, Deserialize)]
#[allow(dead_code)] // read by serde only: the shape is the check
#[serde(rename_all = "camelCase", deny_unknown_fields)]
enum ProcessorStep {
    Filter(Value),
    Select(Vec<String>),
    Compute(BTreeMap<String, Expression>),
    Sort(SortStep),
    Window(WindowStep),
    GroupBy(GroupByStep),
    Limit(u64),
    Dedupe(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // read by serde only: the shape is the check
struct Expression {
    op: ExpressionOp,
    args: Vec<ExpressionArg>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ExpressionOp {
    Add,
    Sub,
    Mul,
    Div,
    PctChange,
    Abs,
    Round,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
#[allow(dead_code)]
enum ExpressionArg {
    Field(String),
    Number(f64),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct SortStep {
    by: String,
    #[serde(default)]
    order: Option<SortOrder>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SortOrder {
    Asc,
    Desc,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct WindowStep {
    field: String,
    size: u64,
    op: WindowOp,
    #[serde(rename = "as")]
    as_field: String,
    by: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum WindowOp {
    Avg,
    Sum,
    Min,
    Max,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct GroupByStep {
    by: Vec<String>,
    aggregates: BTreeMap<String, Aggregate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Aggregate {
    op: AggregateOp,
    field: Option<String>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum AggregateOp {
    Count,
    Sum,
    Avg,
    Min,
    Max,
    First,
    Last,
    Stddev,
}

/// One `BaseWorkflowEngine` step.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkflowStep {
    id: String,
    call: Option<String>,
    method: Option<String>,
    #[allow(dead_code)]
    input: Option<Value>,
    #[serde(default)]
    after: Vec<String>,
    #[allow(dead_code)]
    #[serde(default)]
    optional: bool,
}

// ---------------------------------------------------------------------------------------------
// API templates

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub method: Method,
    /// `/orders/:id`: segments starting with `:` are parameters.
    pub path: String,
    /// A method of the function's class that handles the request.
    pub handler: Option<String>,
    /// The name of a connector (below) whose target function handles the request.
    pub connector: Option<String>,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connector {
    pub name: String,
    /// The function it calls (a recipe parameter may replace it when rendering).
    pub target: String,
    #[serde(default = "two")]
    pub retries: u64,
    #[serde(default = "fifty")]
    pub backoff_ms: u64,
    pub timeout_ms: Option<u64>,
    pub rate_limit: Option<RateLimit>,
}

fn two() -> u64 {
    2
}

fn fifty() -> u64 {
    50
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTemplate {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub routes: Vec<Route>,
    pub rate_limit: Option<RateLimit>,
    #[serde(default)]
    pub connectors: Vec<Connector>,
}

// ---------------------------------------------------------------------------------------------
// Security templates

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthScheme {
    Bearer,
    Hmac,
    ApiKey,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    pub scheme: AuthScheme,
    /// Secret holding `subject:token` lines (bearer, api-key).
    pub tokens_secret: Option<String>,
    /// Secret holding the HMAC key (hmac).
    pub hmac_secret: Option<String>,
    #[serde(default = "authorization")]
    pub header: String,
    #[serde(default = "five_minutes")]
    pub tolerance_ms: u64,
}

fn authorization() -> String {
    "authorization".into()
}

fn five_minutes() -> u64 {
    300_000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub id: String,
    pub effect: Effect,
    pub subjects: Vec<String>,
    pub actions: Vec<String>,
    pub resources: Vec<String>,
    pub when: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Aead {
    #[serde(rename = "chacha20-poly1305")]
    Chacha20Poly1305,
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Encryption {
    pub key_secret: String,
    #[serde(default = "chacha")]
    pub alg: Aead,
    pub fields: Vec<String>,
}

fn chacha() -> Aead {
    Aead::Chacha20Poly1305
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityTemplate {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub auth: Option<Auth>,
    #[serde(default)]
    pub policies: Vec<Policy>,
    #[serde(default = "deny")]
    pub default_effect: Effect,
    pub encryption: Option<Encryption>,
}

fn deny() -> Effect {
    Effect::Deny
}

// ---------------------------------------------------------------------------------------------
// Testing templates

/// How an edge case derives inputs from a valid input and the input schema (see [`super::edge_cases`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Generator {
    /// `{}`.
    EmptyInput,
    /// `null` instead of an object.
    NullInput,
    /// Each required property removed, one at a time (also inside the first item of arrays).
    MissingRequired,
    /// Each property given a value of another type.
    WrongType,
    /// Numbers just below `minimum` / at or below `exclusiveMinimum`.
    BelowMinimum,
    /// Numbers exactly at `minimum`.
    AtMinimum,
    /// Numbers just above `maximum`.
    AboveMaximum,
    /// Numbers exactly at `maximum`.
    AtMaximum,
    /// Arrays one item longer than `maxItems`.
    OversizedArray,
    /// Arrays of exactly `maxItems` items.
    MaxSizeArray,
    /// Arrays emptied.
    EmptyArray,
    /// Strings longer than `maxLength`.
    TooLongString,
    /// Strings emptied.
    EmptyString,
    /// Values outside an `enum`.
    InvalidEnum,
    /// An unknown property added to objects.
    ExtraField,
}

/// What the function must do with a generated input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// It throws an error whose text contains `error` (by default `InputError`).
    Rejected,
    /// It returns an output that the output schema accepts.
    Accepted,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeCase {
    pub generator: Generator,
    pub outcome: Outcome,
    /// Text the error must contain (rejected cases).
    pub error: Option<String>,
    /// At most this many cases from this generator.
    #[serde(default = "eight")]
    pub max_cases: u64,
    /// Arrays longer than this are not generated (oversized and max-size arrays).
    #[serde(default = "max_items")]
    pub max_items: u64,
}

fn eight() -> u64 {
    8
}

fn max_items() -> u64 {
    500
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestingTemplate {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub cases: Vec<EdgeCase>,
}

// ---------------------------------------------------------------------------------------------
// Recipes

/// The five groups of the 20 base classes (docs/product.md, docs/base-library.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    Security,
    Communication,
    Data,
    Intelligence,
    Workflow,
}

/// The 20 base classes of `klf:base`, with their groups.
pub const BASE_CLASSES: [(&str, Group); 20] = [
    ("BaseAuthenticator", Group::Security),
    ("BaseAuthorizer", Group::Security),
    ("BaseEncryptor", Group::Security),
    ("BaseValidator", Group::Security),
    ("BaseMessageProcessor", Group::Communication),
    ("BaseProtocolHandler", Group::Communication),
    ("BaseSerializer", Group::Communication),
    ("BaseConnector", Group::Communication),
    ("BaseDataStore", Group::Data),
    ("BaseDataProcessor", Group::Data),
    ("BaseDataValidator", Group::Data),
    ("BaseDataTransformer", Group::Data),
    ("BaseModelProcessor", Group::Intelligence),
    ("BaseDecisionEngine", Group::Intelligence),
    ("BaseLearningEngine", Group::Intelligence),
    ("BasePredictor", Group::Intelligence),
    ("BaseWorkflowEngine", Group::Workflow),
    ("BaseTaskScheduler", Group::Workflow),
    ("BaseProcessManager", Group::Workflow),
    ("BaseOrchestrator", Group::Workflow),
];

/// The group of a base class, if it is one of the 20.
pub fn group_of(class: &str) -> Option<Group> {
    BASE_CLASSES
        .iter()
        .find(|(name, _)| *name == class)
        .map(|(_, g)| *g)
}

/// The type of a recipe parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    String,
    Integer,
    Number,
    Boolean,
    /// The name of another function of the mesh: becomes a dependency of the package.
    Function,
    /// The name of a node secret (`<data>/secrets/NAME`): becomes one of the package's secrets.
    Secret,
    /// Any JSON value.
    Json,
}

impl ParamType {
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Integer => "integer",
            ParamType::Number => "number",
            ParamType::Boolean => "boolean",
            ParamType::Function => "function",
            ParamType::Secret => "secret",
            ParamType::Json => "json",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parameter {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ParamType,
    /// Without a default the parameter must be set when rendering.
    pub default: Option<Value>,
    #[serde(default)]
    pub description: String,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// The only values allowed.
    pub choices: Option<Vec<Value>>,
    /// What a `json` or `string` value must look like (JSON Schema): the range of a parameter that
    /// is not a number, so a malformed value is refused when the package is asked for, not found
    /// out when it runs.
    pub schema: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeExample {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub input: Value,
    /// The exact output.
    pub expect: Option<Value>,
    /// Or: text the error must contain.
    pub error: Option<String>,
    /// The parameter values `expect` (or `error`) holds for; the others at their defaults. A
    /// package rendered with other values gets a property check instead of this exact outcome
    /// (see [`super::expectations`]).
    #[serde(default)]
    pub params: BTreeMap<String, Value>,
    /// Parameters whose value never changes this example's outcome (where state is kept, how many
    /// calls run at once, an input that sets the value itself), so the outcome stays exact for any
    /// value of them.
    #[serde(default)]
    pub unaffected_by: Vec<String>,
    /// What this example's output meets for every in-range parameter value: a JSON Schema whose
    /// `{{ … }}` strings are computed from `params` and `input` (see [`super::expectations`]).
    pub properties: Option<Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixtures {
    /// Secrets (name → content) the recipe's own tests need on every node that runs them.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub name: String,
    pub title: String,
    #[serde(default)]
    pub description: String,
    /// Words a request may use for this recipe (for matching requests to recipes).
    #[serde(default)]
    pub keywords: Vec<String>,
    /// Whole phrases that mean the same as the title.
    #[serde(default)]
    pub synonyms: Vec<String>,
    pub base_classes: Vec<String>,
    pub groups: Vec<Group>,
    /// The `type` of the rendered package.
    pub function_type: String,
    #[serde(default = "one_zero_zero")]
    pub version: semver::Version,
    /// Names of the ingredients the recipe uses (they must exist).
    #[serde(default)]
    pub uses: Vec<String>,
    #[serde(default)]
    pub parameters: Vec<Parameter>,
    pub input_schema: Value,
    pub output_schema: Value,
    /// What every output meets, whatever the input and the in-range parameter values: a JSON Schema
    /// whose `{{ … }}` strings are computed from `params` and `input`. Checked wherever an exact
    /// output is not known (examples at other parameter values, accepted edge cases).
    pub output_properties: Option<Value>,
    pub examples: Vec<RecipeExample>,
    /// Declared hours a person would need to write this function by hand (ROI, docs/roi.md).
    #[serde(default)]
    pub baseline_hours: f64,
    /// The template folder, relative to the recipe file.
    #[serde(default = "template_folder")]
    pub template: String,
    #[serde(default)]
    pub fixtures: Fixtures,
    /// The template files (path inside the folder → text), read by the loader.
    #[serde(skip_deserializing, default)]
    pub templates: BTreeMap<String, String>,
}

fn one_zero_zero() -> semver::Version {
    semver::Version::new(1, 0, 0)
}

fn template_folder() -> String {
    "template".into()
}

impl Recipe {
    /// The groups its base classes belong to.
    pub fn derived_groups(&self) -> BTreeSet<Group> {
        self.base_classes
            .iter()
            .filter_map(|c| group_of(c))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing and checking

/// Parses one ingredient file. `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<(Kind, Body), IngredientError> {
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let at = e
            .span()
            .map(|span| {
                let (line, column) = line_column(text, span.start);
                format!(" at line {line}, column {column}")
            })
            .unwrap_or_default();
        IngredientError::file(
            file,
            format!("not valid TOML{at}: {}", e.message().trim_end()),
        )
    })?;
    let kind_value = table
        .remove("kind")
        .ok_or_else(|| IngredientError::field(file, "kind", kinds_expected("missing")))?;
    let kind = kind_value.as_str().and_then(Kind::parse).ok_or_else(|| {
        IngredientError::field(file, "kind", kinds_expected(&kind_value.to_string()))
    })?;
    let value = toml::Value::Table(table);
    let body = match kind {
        Kind::Model => Body::Model(typed(value, file)?),
        Kind::DataFlow => Body::DataFlow(typed(value, file)?),
        Kind::Api => Body::Api(typed(value, file)?),
        Kind::Security => Body::Security(typed(value, file)?),
        Kind::Testing => Body::Testing(typed(value, file)?),
        Kind::Recipe => Body::Recipe(Box::new(typed(value, file)?)),
    };
    check(&body, file)?;
    Ok((kind, body))
}

fn kinds_expected(found: &str) -> String {
    format!(
        "{found}; expected one of {}",
        Kind::ALL.map(|k| format!("\"{k}\"")).join(", ")
    )
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Deserializes with the path of the failing field.
fn typed<T: serde::de::DeserializeOwned>(
    value: toml::Value,
    file: &str,
) -> Result<T, IngredientError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().message().trim_end().to_string();
        // A missing field is reported by its parent: name the field itself.
        let field = match missing_field(&message) {
            Some(missing) if path == "." => missing.to_string(),
            Some(missing) => format!("{path}.{missing}"),
            None if path == "." => "(top level)".to_string(),
            None => path,
        };
        IngredientError::field(file, field, message)
    })
}

fn missing_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split('`').next()
}

/// Deserializes a JSON value with the path of the failing field under `prefix`.
fn typed_json<T: serde::de::DeserializeOwned>(
    value: &Value,
    file: &str,
    prefix: &str,
) -> Result<T, IngredientError> {
    serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            prefix.to_string()
        } else {
            format!("{prefix}.{path}")
        };
        IngredientError::field(file, field, e.inner().to_string())
    })
}

struct Checker<'a> {
    file: &'a str,
}

impl Checker<'_> {
    fn fail(&self, field: impl Into<String>, message: impl Into<String>) -> IngredientError {
        IngredientError::field(self.file, field, message)
    }

    fn name(&self, field: &str, name: &str) -> Result<(), IngredientError> {
        if is_valid_name(name) {
            Ok(())
        } else {
            Err(self.fail(
                field,
                format!("{name:?} must be 1 to 64 characters of a-z, 0-9 and '-', starting with a letter"),
            ))
        }
    }

    fn finite(&self, field: &str, value: f64, min: f64, max: f64) -> Result<(), IngredientError> {
        if value.is_finite() && value >= min && value <= max {
            Ok(())
        } else {
            Err(self.fail(field, format!("{value} is out of range ({min} to {max})")))
        }
    }

    fn identifier(&self, field: &str, text: &str) -> Result<(), IngredientError> {
        let mut chars = text.chars();
        let ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if ok {
            Ok(())
        } else {
            Err(self.fail(
                field,
                format!("{text:?} is not an identifier (letters, digits and _)"),
            ))
        }
    }

    fn secret_name(&self, field: &str, name: &str) -> Result<(), IngredientError> {
        let ok = (1..=64).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !name.starts_with('.');
        if ok {
            Ok(())
        } else {
            Err(self.fail(
                field,
                format!("{name:?} is not a secret name (1 to 64 of a-z, A-Z, 0-9, '-', '_', '.'; not starting with '.')"),
            ))
        }
    }

    fn non_empty_strings(&self, field: &str, items: &[String]) -> Result<(), IngredientError> {
        if items.is_empty() {
            return Err(self.fail(field, "must list at least one entry"));
        }
        if let Some(i) = items.iter().position(|s| s.trim().is_empty()) {
            return Err(self.fail(format!("{field}[{i}]"), "must not be empty"));
        }
        Ok(())
    }
}

/// Checks a condition of `BaseDecisionEngine` (also used by filters and policies).
pub fn check_condition(condition: &Value, field: &str) -> Result<(), (String, String)> {
    const OPS: [&str; 11] = [
        "eq", "ne", "gt", "gte", "lt", "lte", "in", "nin", "contains", "matches", "exists",
    ];
    let Value::Object(map) = condition else {
        return Err((field.to_string(), "a condition must be a table".into()));
    };
    let keys: BTreeSet<&str> = map.keys().map(String::as_str).collect();
    let combinator = ["all", "any", "not"]
        .into_iter()
        .filter(|k| keys.contains(k))
        .collect::<Vec<_>>();
    match combinator.as_slice() {
        [one] if keys.len() == 1 => match (*one, &map[*one]) {
            ("not", inner) => check_condition(inner, &format!("{field}.not")),
            (key, Value::Array(items)) if !items.is_empty() => {
                for (i, item) in items.iter().enumerate() {
                    check_condition(item, &format!("{field}.{key}[{i}]"))?;
                }
                Ok(())
            }
            (key, _) => Err((
                format!("{field}.{key}"),
                "expected a non-empty array of conditions".into(),
            )),
        },
        [] => {
            if let Some(unknown) = keys.iter().find(|k| !["field", "op", "value"].contains(*k)) {
                return Err((
                    format!("{field}.{unknown}"),
                    "unknown key (a condition is {all}, {any}, {not} or {field, op, value})".into(),
                ));
            }
            if !map.get("field").is_some_and(Value::is_string) {
                return Err((
                    format!("{field}.field"),
                    "expected a field path string".into(),
                ));
            }
            let op = map.get("op").and_then(Value::as_str).unwrap_or_default();
            if !OPS.contains(&op) {
                return Err((
                    format!("{field}.op"),
                    format!("{op:?} is not an operator (known: {})", OPS.join(", ")),
                ));
            }
            if op != "exists" && !map.contains_key("value") {
                return Err((
                    format!("{field}.value"),
                    format!("operator {op} needs a value"),
                ));
            }
            Ok(())
        }
        _ => Err((
            field.to_string(),
            "a condition has exactly one of all, any, not, or field/op/value".into(),
        )),
    }
}

fn check(body: &Body, file: &str) -> Result<(), IngredientError> {
    let c = Checker { file };
    match body {
        Body::Model(m) => check_model(&c, m),
        Body::DataFlow(d) => check_data_flow(&c, d),
        Body::Api(a) => check_api(&c, a),
        Body::Security(s) => check_security(&c, s),
        Body::Testing(t) => check_testing(&c, t),
        Body::Recipe(r) => check_recipe(&c, r),
    }
}

fn check_model(c: &Checker, m: &ModelConfig) -> Result<(), IngredientError> {
    c.name("name", &m.name)?;
    if m.model.trim().is_empty() {
        return Err(c.fail("model", "must not be empty"));
    }
    let p = &m.parameters;
    if let Some(t) = p.temperature {
        c.finite("parameters.temperature", t, 0.0, 2.0)?;
    }
    if let Some(t) = p.top_p {
        c.finite("parameters.top_p", t, 0.0, 1.0)?;
    }
    if let Some(n) = p.max_tokens
        && !(1..=1_000_000).contains(&n)
    {
        return Err(c.fail(
            "parameters.max_tokens",
            format!("{n} is out of range (1 to 1000000)"),
        ));
    }
    if let Some(price) = &m.price {
        c.finite("price.input_per_1k", price.input_per_1k, 0.0, 1e6)?;
        c.finite("price.output_per_1k", price.output_per_1k, 0.0, 1e6)?;
        if price.currency.len() != 3 || !price.currency.chars().all(|ch| ch.is_ascii_uppercase()) {
            return Err(c.fail(
                "price.currency",
                format!("{:?} is not a currency code like USD", price.currency),
            ));
        }
    }
    if let Some(env) = &m.api_key_env {
        let ok = env.starts_with(|ch: char| ch.is_ascii_uppercase() || ch == '_')
            && env
                .chars()
                .all(|ch| ch.is_ascii_uppercase() || ch.is_ascii_digit() || ch == '_');
        if !ok {
            return Err(c.fail(
                "api_key_env",
                format!("{env:?} is not an environment variable name (A-Z, 0-9, _)"),
            ));
        }
    }
    if let Some(url) = &m.base_url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return Err(c.fail(
            "base_url",
            format!("{url:?} must start with http:// or https://"),
        ));
    }
    match (m.provider, &m.local) {
        (Provider::Local, None) => Err(c.fail(
            "local",
            "a local model needs a [local] table (kind, weights, bias, threshold)",
        )),
        (Provider::Local, Some(local)) => {
            if local.weights.is_empty() {
                return Err(c.fail("local.weights", "must have at least one feature"));
            }
            for (feature, w) in &local.weights {
                c.identifier(&format!("local.weights.{feature}"), feature)?;
                c.finite(&format!("local.weights.{feature}"), *w, -1e9, 1e9)?;
            }
            c.finite("local.bias", local.bias, -1e9, 1e9)?;
            if let Some(t) = local.threshold {
                let (lo, hi) = match local.kind {
                    LocalModelKind::Logistic => (0.0, 1.0),
                    LocalModelKind::Linear => (-1e9, 1e9),
                };
                c.finite("local.threshold", t, lo, hi)?;
            }
            Ok(())
        }
        (_, Some(_)) => Err(c.fail(
            "local",
            "only a model with provider = \"local\" has a [local] table",
        )),
        (Provider::Openai, None) if m.price.is_none() => Err(c.fail(
            "price",
            "a provider model needs a [price] table (input_per_1k, output_per_1k)",
        )),
        _ => Ok(()),
    }
}

fn check_data_flow(c: &Checker, d: &DataFlow) -> Result<(), IngredientError> {
    c.name("name", &d.name)?;
    if d.steps.is_empty() {
        return Err(c.fail("steps", "must have at least one step"));
    }
    match d.engine {
        Engine::DataProcessor => {
            if d.output.is_some() {
                return Err(c.fail("output", "only a workflow has an output template"));
            }
            for (i, step) in d.steps.iter().enumerate() {
                let field = format!("steps[{i}]");
                let parsed: ProcessorStep = typed_json(step, c.file, &field)?;
                match parsed {
                    ProcessorStep::Filter(condition) => {
                        check_condition(&condition, &format!("{field}.filter"))
                            .map_err(|(f, m)| c.fail(f, m))?
                    }
                    ProcessorStep::Window(w) if w.size == 0 => {
                        return Err(c.fail(format!("{field}.window.size"), "must be at least 1"));
                    }
                    ProcessorStep::GroupBy(g) => {
                        for (name, agg) in &g.aggregates {
                            if agg.op != AggregateOp::Count && agg.field.is_none() {
                                return Err(c.fail(
                                    format!("{field}.groupBy.aggregates.{name}.field"),
                                    "needed by every aggregate but count",
                                ));
                            }
                        }
                    }
                    _ => {}
                }
            }
            Ok(())
        }
        Engine::Workflow => {
            let mut steps = Vec::new();
            for (i, step) in d.steps.iter().enumerate() {
                let field = format!("steps[{i}]");
                let parsed: WorkflowStep = typed_json(step, c.file, &field)?;
                c.identifier(&format!("{field}.id"), &parsed.id)?;
                match (&parsed.call, &parsed.method) {
                    (Some(call), None) => c.name(&format!("{field}.call"), call)?,
                    (None, Some(method)) => c.identifier(&format!("{field}.method"), method)?,
                    _ => {
                        return Err(c.fail(
                            field,
                            "a workflow step has exactly one of `call` (a function) or `method`",
                        ));
                    }
                }
                steps.push(parsed);
            }
            let ids: Vec<&str> = steps.iter().map(|s| s.id.as_str()).collect();
            for (i, step) in steps.iter().enumerate() {
                if ids[..i].contains(&step.id.as_str()) {
                    return Err(c.fail(
                        format!("steps[{i}].id"),
                        format!("duplicate step id {:?}", step.id),
                    ));
                }
                for (j, after) in step.after.iter().enumerate() {
                    if !ids.contains(&after.as_str()) {
                        return Err(c.fail(
                            format!("steps[{i}].after[{j}]"),
                            format!("unknown step {after:?} (steps: {})", ids.join(", ")),
                        ));
                    }
                }
            }
            if let Some(cycle) = find_cycle(&steps) {
                return Err(c.fail(
                    "steps",
                    format!("the steps form a cycle: {}", cycle.join(" → ")),
                ));
            }
            Ok(())
        }
    }
}

fn find_cycle(steps: &[WorkflowStep]) -> Option<Vec<String>> {
    fn visit(
        id: &str,
        steps: &[WorkflowStep],
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(id) {
            Some(2) => return None,
            Some(1) => {
                let start = path.iter().position(|p| p == id).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(id.to_string());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(id.to_string(), 1);
        path.push(id.to_string());
        if let Some(step) = steps.iter().find(|s| s.id == id) {
            for after in &step.after {
                if let Some(cycle) = visit(after, steps, state, path) {
                    return Some(cycle);
                }
            }
        }
        path.pop();
        state.insert(id.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for step in steps {
        if let Some(cycle) = visit(&step.id, steps, &mut state, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

fn check_rate_limit(c: &Checker, field: &str, r: &RateLimit) -> Result<(), IngredientError> {
    if !(r.per_second.is_finite() && r.per_second > 0.0 && r.per_second <= 1e6) {
        return Err(c.fail(
            format!("{field}.per_second"),
            format!("{} must be above 0 (at most 1000000)", r.per_second),
        ));
    }
    if r.burst == 0 {
        return Err(c.fail(format!("{field}.burst"), "must be at least 1"));
    }
    Ok(())
}

fn check_api(c: &Checker, a: &ApiTemplate) -> Result<(), IngredientError> {
    c.name("name", &a.name)?;
    if a.routes.is_empty() && a.connectors.is_empty() {
        return Err(c.fail("routes", "an API template has routes, connectors or both"));
    }
    if let Some(r) = &a.rate_limit {
        check_rate_limit(c, "rate_limit", r)?;
    }
    let mut connectors = Vec::new();
    for (i, conn) in a.connectors.iter().enumerate() {
        let field = format!("connectors[{i}]");
        c.identifier(&format!("{field}.name"), &conn.name)?;
        if connectors.contains(&conn.name.as_str()) {
            return Err(c.fail(
                format!("{field}.name"),
                format!("duplicate connector {:?}", conn.name),
            ));
        }
        connectors.push(conn.name.as_str());
        c.name(&format!("{field}.target"), &conn.target)?;
        if conn.retries > 10 {
            return Err(c.fail(format!("{field}.retries"), "at most 10"));
        }
        if let Some(r) = &conn.rate_limit {
            check_rate_limit(c, &format!("{field}.rate_limit"), r)?;
        }
    }
    let mut seen = BTreeSet::new();
    for (i, route) in a.routes.iter().enumerate() {
        let field = format!("routes[{i}]");
        if !route.path.starts_with('/') || route.path.contains("//") || route.path.contains(' ') {
            return Err(c.fail(
                format!("{field}.path"),
                format!("{:?} must be an absolute path like /orders/:id", route.path),
            ));
        }
        for segment in route.path.split('/').filter_map(|s| s.strip_prefix(':')) {
            c.identifier(&format!("{field}.path"), segment)?;
        }
        if !seen.insert((format!("{:?}", route.method), route.path.clone())) {
            return Err(c.fail(
                field,
                format!("duplicate route {:?} {}", route.method, route.path),
            ));
        }
        match (&route.handler, &route.connector) {
            (Some(handler), None) => c.identifier(&format!("{field}.handler"), handler)?,
            (None, Some(connector)) => {
                if !connectors.contains(&connector.as_str()) {
                    return Err(c.fail(
                        format!("{field}.connector"),
                        format!(
                            "unknown connector {connector:?} (declared: {})",
                            if connectors.is_empty() {
                                "none".to_string()
                            } else {
                                connectors.join(", ")
                            }
                        ),
                    ));
                }
            }
            _ => {
                return Err(c.fail(
                    field,
                    "a route has exactly one of `handler` (a method) or `connector`",
                ));
            }
        }
    }
    Ok(())
}

fn check_security(c: &Checker, s: &SecurityTemplate) -> Result<(), IngredientError> {
    c.name("name", &s.name)?;
    if s.auth.is_none() && s.policies.is_empty() && s.encryption.is_none() {
        return Err(c.fail(
            "auth",
            "a security template has at least one of [auth], [[policies]], [encryption]",
        ));
    }
    if let Some(auth) = &s.auth {
        match auth.scheme {
            AuthScheme::Bearer | AuthScheme::ApiKey => match &auth.tokens_secret {
                Some(secret) => c.secret_name("auth.tokens_secret", secret)?,
                None => {
                    return Err(c.fail(
                        "auth.tokens_secret",
                        "needed by the bearer and api-key schemes",
                    ));
                }
            },
            AuthScheme::Hmac => match &auth.hmac_secret {
                Some(secret) => c.secret_name("auth.hmac_secret", secret)?,
                None => return Err(c.fail("auth.hmac_secret", "needed by the hmac scheme")),
            },
        }
        if auth.header.trim().is_empty() {
            return Err(c.fail("auth.header", "must not be empty"));
        }
        if auth.tolerance_ms == 0 || auth.tolerance_ms > 86_400_000 {
            return Err(c.fail("auth.tolerance_ms", "must be between 1 and 86400000"));
        }
    }
    let mut ids = BTreeSet::new();
    for (i, p) in s.policies.iter().enumerate() {
        let field = format!("policies[{i}]");
        c.name(&format!("{field}.id"), &p.id)?;
        if !ids.insert(p.id.clone()) {
            return Err(c.fail(
                format!("{field}.id"),
                format!("duplicate policy {:?}", p.id),
            ));
        }
        c.non_empty_strings(&format!("{field}.subjects"), &p.subjects)?;
        c.non_empty_strings(&format!("{field}.actions"), &p.actions)?;
        c.non_empty_strings(&format!("{field}.resources"), &p.resources)?;
        if let Some(when) = &p.when {
            check_condition(when, &format!("{field}.when")).map_err(|(f, m)| c.fail(f, m))?;
        }
    }
    if let Some(e) = &s.encryption {
        c.secret_name("encryption.key_secret", &e.key_secret)?;
        c.non_empty_strings("encryption.fields", &e.fields)?;
    }
    Ok(())
}

fn check_testing(c: &Checker, t: &TestingTemplate) -> Result<(), IngredientError> {
    c.name("name", &t.name)?;
    if t.cases.is_empty() {
        return Err(c.fail("cases", "must have at least one case"));
    }
    for (i, case) in t.cases.iter().enumerate() {
        let field = format!("cases[{i}]");
        if case.outcome == Outcome::Accepted && case.error.is_some() {
            return Err(c.fail(
                format!("{field}.error"),
                "only a rejected case expects an error",
            ));
        }
        if case.max_cases == 0 || case.max_cases > 100 {
            return Err(c.fail(format!("{field}.max_cases"), "must be between 1 and 100"));
        }
        if case.max_items == 0 || case.max_items > 10_000 {
            return Err(c.fail(format!("{field}.max_items"), "must be between 1 and 10000"));
        }
    }
    Ok(())
}

fn check_recipe(c: &Checker, r: &Recipe) -> Result<(), IngredientError> {
    c.name("name", &r.name)?;
    if r.title.trim().is_empty() {
        return Err(c.fail("title", "must not be empty"));
    }
    if r.function_type.trim().is_empty() {
        return Err(c.fail("function_type", "must not be empty"));
    }
    c.non_empty_strings("base_classes", &r.base_classes)?;
    for (i, class) in r.base_classes.iter().enumerate() {
        if group_of(class).is_none() {
            return Err(c.fail(
                format!("base_classes[{i}]"),
                format!(
                    "{class:?} is not a base class of klf:base (known: {})",
                    BASE_CLASSES.map(|(n, _)| n).join(", ")
                ),
            ));
        }
    }
    let listed: BTreeSet<Group> = r.groups.iter().copied().collect();
    let derived = r.derived_groups();
    if listed != derived {
        let names = |set: &BTreeSet<Group>| {
            set.iter()
                .map(|g| {
                    serde_json::to_value(g)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(c.fail(
            "groups",
            format!(
                "[{}] does not match the groups of the base classes used: [{}]",
                names(&listed),
                names(&derived)
            ),
        ));
    }
    for (i, u) in r.uses.iter().enumerate() {
        c.name(&format!("uses[{i}]"), u)?;
    }
    if r.baseline_hours < 0.0 || !r.baseline_hours.is_finite() {
        return Err(c.fail("baseline_hours", "must be a non-negative number"));
    }
    let mut names = BTreeSet::new();
    for (i, p) in r.parameters.iter().enumerate() {
        let field = format!("parameters[{i}]");
        c.identifier(&format!("{field}.name"), &p.name)?;
        if !names.insert(p.name.clone()) {
            return Err(c.fail(
                format!("{field}.name"),
                format!("duplicate parameter {:?}", p.name),
            ));
        }
        if (p.min.is_some() || p.max.is_some())
            && !matches!(p.kind, ParamType::Integer | ParamType::Number)
        {
            return Err(c.fail(
                format!("{field}.min"),
                "only numeric parameters have min and max",
            ));
        }
        if let Some(schema) = &p.schema {
            if !matches!(p.kind, ParamType::Json | ParamType::String) {
                return Err(c.fail(
                    format!("{field}.schema"),
                    "only json and string parameters have a schema",
                ));
            }
            super::schema::check_schema(schema)
                .map_err(|(f, m)| c.fail(format!("{field}.schema{f}"), m))?;
        }
        if let Some(default) = &p.default {
            coerce(p, default).map_err(|m| c.fail(format!("{field}.default"), m))?;
        }
        if let Some(choices) = &p.choices {
            for (j, choice) in choices.iter().enumerate() {
                coerce(
                    &Parameter {
                        choices: None,
                        ..p.clone()
                    },
                    choice,
                )
                .map_err(|m| c.fail(format!("{field}.choices[{j}]"), m))?;
            }
        }
    }
    super::schema::check_schema(&r.input_schema)
        .map_err(|(f, m)| c.fail(format!("input_schema{f}"), m))?;
    super::schema::check_schema(&r.output_schema)
        .map_err(|(f, m)| c.fail(format!("output_schema{f}"), m))?;
    if r.examples.is_empty() {
        return Err(c.fail(
            "examples",
            "a recipe needs at least one example (its tests start from it)",
        ));
    }
    let mut example_names = BTreeSet::new();
    for (i, ex) in r.examples.iter().enumerate() {
        let field = format!("examples[{i}]");
        c.identifier(&format!("{field}.name"), &ex.name.replace('-', "_"))?;
        if !example_names.insert(ex.name.clone()) {
            return Err(c.fail(
                format!("{field}.name"),
                format!("duplicate example {:?}", ex.name),
            ));
        }
        match (&ex.expect, &ex.error) {
            (Some(expect), None) => {
                super::schema::validate(&r.input_schema, &ex.input).map_err(|m| {
                    c.fail(
                        format!("{field}.input"),
                        format!("does not match input_schema: {m}"),
                    )
                })?;
                super::schema::validate(&r.output_schema, expect).map_err(|m| {
                    c.fail(
                        format!("{field}.expect"),
                        format!("does not match output_schema: {m}"),
                    )
                })?;
            }
            (None, Some(_)) => {}
            _ => {
                return Err(c.fail(field, "an example has exactly one of `expect` (the output) or `error` (text of the error)"));
            }
        }
    }
    if !r.examples.iter().any(|e| e.expect.is_some()) {
        return Err(c.fail(
            "examples",
            "at least one example must expect an output (edge cases start from its input)",
        ));
    }
    super::expectations::check(r).map_err(|(f, m)| c.fail(f, m))?;
    for name in r.fixtures.secrets.keys() {
        c.secret_name(&format!("fixtures.secrets.{name}"), name)?;
    }
    if r.template.is_empty() || r.template.contains("..") || r.template.starts_with('/') {
        return Err(c.fail("template", "must be a folder inside the recipe's folder"));
    }
    Ok(())
}

/// Checks `value` against a parameter's type (and range, choices) and returns it as JSON. Strings
/// (from `--set key=value`) are parsed into the parameter's type.
pub fn coerce(p: &Parameter, value: &Value) -> Result<Value, String> {
    let parsed = match (p.kind, value) {
        (ParamType::Json, Value::String(text)) => {
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()))
        }
        (ParamType::Json, v) => v.clone(),
        (ParamType::String | ParamType::Function | ParamType::Secret, Value::String(s)) => {
            Value::String(s.clone())
        }
        (ParamType::Boolean, Value::Bool(b)) => Value::Bool(*b),
        (ParamType::Boolean, Value::String(s)) => match s.as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(format!("{s:?} is not a boolean (true or false)")),
        },
        (ParamType::Integer, Value::Number(n)) if n.is_i64() || n.is_u64() => value.clone(),
        (ParamType::Integer, Value::String(s)) => s
            .trim()
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| format!("{s:?} is not an integer"))?,
        (ParamType::Number, Value::Number(_)) => value.clone(),
        (ParamType::Number, Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .and_then(|f| serde_json::Number::from_f64(f).map(Value::Number))
            .ok_or_else(|| format!("{s:?} is not a number"))?,
        (kind, other) => {
            return Err(format!(
                "expected a {} value, found {}",
                kind.as_str(),
                json_type(other)
            ));
        }
    };
    if let Some(n) = parsed.as_f64()
        && matches!(p.kind, ParamType::Integer | ParamType::Number)
    {
        if let Some(min) = p.min
            && n < min
        {
            return Err(format!("{n} is below the minimum {min}"));
        }
        if let Some(max) = p.max
            && n > max
        {
            return Err(format!("{n} is above the maximum {max}"));
        }
    }
    if let Some(name) = parsed.as_str() {
        if p.kind == ParamType::Function && !is_valid_name(name) {
            return Err(format!("{name:?} is not a function name (a-z, 0-9, '-')"));
        }
        if p.kind == ParamType::Secret {
            let c = Checker { file: "" };
            c.secret_name("", name)
                .map_err(|_| format!("{name:?} is not a secret name"))?;
        }
    }
    if let Some(schema) = &p.schema
        && matches!(p.kind, ParamType::Json | ParamType::String)
    {
        super::schema::validate(schema, &parsed)
            .map_err(|m| format!("does not have the shape the parameter needs: {m}"))?;
    }
    if let Some(choices) = &p.choices
        && !choices.contains(&parsed)
    {
        return Err(format!(
            "{parsed} is not one of {}",
            choices
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(parsed)
}

/// The JSON type of a value, for messages.
pub fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(text: &str) -> String {
        parse(text, "x.toml").unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let model = "kind = \"model\"\nname = \"m\"\nprovider = \"openai\"\nmodel = \"gpt\"\n[price]\ninput_per_1k = 0.1\noutput_per_1k = 0.2\n";
        assert!(parse(model, "x.toml").is_ok());
        let cases = [
            (model.replace("openai", "acme"), "x.toml: field `provider`"),
            (
                model.replace("name = \"m\"", "name = \"M M\""),
                "x.toml: field `name`",
            ),
            (
                model.replace("input_per_1k = 0.1", "input_per_1k = -1.0"),
                "field `price.input_per_1k`",
            ),
            (format!("{model}extra = 1\n"), "unknown field `extra`"),
            (
                model.replace("model = \"gpt\"\n", ""),
                "x.toml: field `model`: missing field `model`",
            ),
            (
                model.replace("kind = \"model\"", "kind = 3"),
                "field `kind`",
            ),
            (
                "kind = \"model\"\nname = ".to_string(),
                "not valid TOML at line 2",
            ),
        ];
        for (text, needle) in cases {
            let error = error_of(&text);
            assert!(error.contains(needle), "{needle:?} not in {error:?}");
        }
    }

    #[test]
    fn conditions_and_parameters_are_checked() {
        assert!(
            check_condition(
                &serde_json::json!({"all": [{"field": "a", "op": "gt", "value": 1}]}),
                "when"
            )
            .is_ok()
        );
        let (field, _) = check_condition(
            &serde_json::json!({"any": [{"field": "a", "op": "near", "value": 1}]}),
            "when",
        )
        .unwrap_err();
        assert_eq!(field, "when.any[0].op");
        let p = Parameter {
            name: "n".into(),
            kind: ParamType::Integer,
            default: None,
            description: String::new(),
            min: Some(1.0),
            max: Some(10.0),
            choices: None,
            schema: None,
        };
        assert_eq!(coerce(&p, &Value::from("7")).unwrap(), Value::from(7));
        assert!(
            coerce(&p, &Value::from("70"))
                .unwrap_err()
                .contains("above the maximum")
        );
        assert!(
            coerce(&p, &Value::from("x"))
                .unwrap_err()
                .contains("not an integer")
        );
    }
}
