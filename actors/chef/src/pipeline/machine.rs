//! The pipeline as a pure state machine: which agent to ask next, and what an answer means for the
//! run. No I/O, no clock, no actors — the driver in [`super`] asks the agents, writes the package
//! and keeps time; everything it decides is here, where it is tested stage by stage.
//!
//! The stages, in order (a failed one ends the run with its reason):
//! interpret → write tests → (generate → validate → test)+ → deploy → monitor.
//! Generate, validate and test form a round; a round whose code fails gets up to [`MAX_REPAIRS`]
//! more, each told what failed (never what was expected), and the run stops early when a round
//! fails exactly as the one before.

use std::sync::Arc;

use crate::ingredients::Library;
use crate::ingredients::kinds::ParamType;
use crate::messages::{
    AgentMessage, AgentResponse, AgentType, Attempt, CaseResult, GeneratedCode, Problem,
    TechnicalRequirement, TestCase, TestResult, ValidationResult,
};
use klf_node_core::validator::PerfMode;

use super::{ChefRun, RunOutcome, StageEvent, StageReport};

/// Repair rounds after the first attempt.
pub const MAX_REPAIRS: u32 = 3;

/// Where the run is.
#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    Interpret,
    /// The requirement waits for its version, from what the catalog holds (an effect).
    Version,
    WriteTests,
    Generate {
        round: u32,
    },
    /// The round's code waits to be written to the data dir (an effect of the driver).
    Write {
        round: u32,
        code: Box<GeneratedCode>,
    },
    Validate {
        round: u32,
        code: Box<GeneratedCode>,
    },
    Test {
        round: u32,
        code: Box<GeneratedCode>,
    },
    Deploy {
        code: Box<GeneratedCode>,
    },
    Watch {
        function: String,
        version: String,
        replicas: u32,
    },
    Done,
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Ask `role` with `message`; the stage is shown as `stage`.
    Ask {
        stage: String,
        role: AgentType,
        message: AgentMessage,
    },
    /// Write the package somewhere a person can read it, then call [`Cooking::written`].
    Write(Box<GeneratedCode>),
    /// Look up what the catalog publishes of `function` (its versions, and the package of the one
    /// it serves), then call [`Cooking::versioned`].
    Versions { function: String },
    /// The run is over: [`Cooking::run`] holds the outcome.
    Done,
}

/// What a run asks for beyond the request (the parts of `ChefOptions` the machine reads).
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub deploy: bool,
    pub replicas: u32,
    /// Model tokens (in + out) the run may spend; `None`: unbounded.
    pub token_budget: Option<u64>,
    /// `--update NAME`: the run builds the next version of this deployed function.
    pub update: Option<String>,
    /// Generate random keys for secrets the function needs that no node holds.
    pub create_secrets: bool,
    /// What the validator's performance test does over budget.
    pub perf: PerfMode,
}

/// One run of the pipeline, between stages.
pub struct Cooking {
    run: ChefRun,
    stage: Stage,
    plan: Plan,
    library: Arc<Library>,
    requirement: Option<TechnicalRequirement>,
    tests: Vec<TestCase>,
    /// What the next round's generator is told (test names and failure messages).
    feedback: Vec<String>,
    last_failure: Option<Vec<String>>,
    /// The previous round's code, for a repair that starts from it.
    previous: Option<Box<GeneratedCode>>,
    validation: Option<ValidationResult>,
}

impl Cooking {
    /// A run that starts by interpreting `run.request`.
    pub fn new(run: ChefRun, plan: Plan, library: Arc<Library>) -> Self {
        Self {
            run,
            stage: Stage::Interpret,
            plan,
            library,
            requirement: None,
            tests: Vec::new(),
            feedback: Vec::new(),
            last_failure: None,
            previous: None,
            validation: None,
        }
    }

    /// The run so far (its outcome once [`Next::Done`]).
    pub fn run(&self) -> &ChefRun {
        &self.run
    }

    /// The run, to keep.
    pub fn into_run(self) -> ChefRun {
        self.run
    }

    pub fn stage(&self) -> &Stage {
        &self.stage
    }

    /// What to do next.
    pub fn next(&self) -> Next {
        let label = |name: &str, round: u32| {
            if round == 0 {
                name.to_string()
            } else {
                format!("{name} (repair {round})")
            }
        };
        let ask = |stage: String, role, message| Next::Ask {
            stage,
            role,
            message,
        };
        match (&self.stage, &self.requirement) {
            (Stage::Interpret, _) => ask(
                "interpret".into(),
                AgentType::RequirementInterpreter,
                AgentMessage::Interpret {
                    request: self.run.request.clone(),
                },
            ),
            (Stage::WriteTests, Some(requirement)) => ask(
                "write tests".into(),
                AgentType::TestGenerator,
                AgentMessage::WriteTests {
                    requirement: Box::new(requirement.clone()),
                },
            ),
            (Stage::Generate { round }, Some(requirement)) => ask(
                label("generate", *round),
                AgentType::CodeGenerator,
                AgentMessage::Generate {
                    requirement: Box::new(requirement.clone()),
                    attempt: Box::new(Attempt {
                        round: *round,
                        feedback: self.feedback.clone(),
                        previous: self.previous.as_deref().cloned(),
                    }),
                },
            ),
            (Stage::Write { code, .. }, _) => Next::Write(code.clone()),
            (Stage::Version, Some(requirement)) => Next::Versions {
                function: requirement.function.clone(),
            },
            (Stage::Validate { round, code }, _) => ask(
                label("validate", *round),
                AgentType::CodeValidator,
                AgentMessage::Validate { code: code.clone() },
            ),
            (Stage::Test { round, code }, _) => ask(
                label("test", *round),
                AgentType::TestGenerator,
                AgentMessage::RunTests {
                    code: code.clone(),
                    tests: self.tests.clone(),
                },
            ),
            (Stage::Deploy { code }, _) => ask(
                "deploy".into(),
                AgentType::DeploymentManager,
                AgentMessage::Deploy {
                    code: code.clone(),
                    replicas: self.plan.replicas,
                    probe: self
                        .tests
                        .iter()
                        .find(|t| t.expect.is_some())
                        .map(|t| t.input.clone()),
                    create_secrets: self.plan.create_secrets,
                    canary: self.plan.update.is_some(),
                    perf: self.plan.perf,
                    latency_budget_ms: self
                        .requirement
                        .as_ref()
                        .and_then(|r| r.limits.latency_budget_ms),
                },
            ),
            (
                Stage::Watch {
                    function, version, ..
                },
                _,
            ) => ask(
                "monitor".into(),
                AgentType::Monitor,
                AgentMessage::Watch {
                    function: function.clone(),
                    version: version.clone(),
                },
            ),
            // A stage that needs the requirement without one cannot happen (interpret sets it);
            // ending the run is the safe answer.
            (Stage::Version | Stage::WriteTests | Stage::Generate { .. }, None)
            | (Stage::Done, _) => Next::Done,
        }
    }

    /// The driver looked up the function: `published` are its versions in the catalog, `current`
    /// the package it serves (if any). The requirement gets its version: the recipe's (or 1.0.0)
    /// for a new function; for one that exists, the next minor with `--update` (new behaviour)
    /// or the next patch otherwise (a rebuild of the same request, a repair) — never a version
    /// that is published already, so different content never reaches a user under an old one.
    /// With `--update`, the first round starts from the current package.
    pub fn versioned(&mut self, published: &[semver::Version], current: Option<GeneratedCode>) {
        if self.stage != Stage::Version {
            return;
        }
        let Some(requirement) = self.requirement.as_mut() else {
            self.fail(vec!["no requirement to version".into()]);
            return;
        };
        if let Some(name) = &self.plan.update
            && published.is_empty()
        {
            self.fail(vec![format!(
                "--update {name}: no function named {name} is published; drop --update to \
                 build it as a new function"
            )]);
            return;
        }
        if let Some(version) = next_version(published, self.plan.update.is_some()) {
            requirement.version = version.to_string();
        }
        if self.plan.update.is_some() {
            self.previous = current.map(Box::new);
        }
        if let Some(run_requirement) = self.run.requirement.as_mut() {
            run_requirement.version.clone_from(&requirement.version);
        }
        self.stage = Stage::WriteTests;
    }

    /// The driver wrote the round's package (`dir`: where, if it could).
    pub fn written(&mut self, dir: Option<String>) {
        if let Stage::Write { round, code } = std::mem::replace(&mut self.stage, Stage::Done) {
            if let (Some(report), Some(dir)) = (self.run.stages.last_mut(), &dir) {
                report.detail.push_str(&format!(", written to {dir}"));
            }
            self.run.code_dir = dir;
            self.stage = Stage::Validate { round, code };
        }
    }

    /// Takes the answer to the last [`Next::Ask`] (`ms` it took, `node` whose agent answered) and
    /// moves on; returns the finished stage as the progress display shows it.
    pub fn answer(
        &mut self,
        stage: &str,
        response: AgentResponse,
        ms: u64,
        node: &str,
    ) -> StageEvent {
        let current = std::mem::replace(&mut self.stage, Stage::Done);
        // What an agent spent before it failed is spent all the same.
        if let AgentResponse::Failed {
            tokens_in,
            tokens_out,
            ..
        } = &response
        {
            self.run.tokens_in += tokens_in;
            self.run.tokens_out += tokens_out;
        }
        let (ok, detail) = match current {
            Stage::Interpret => self.interpreted(response),
            Stage::WriteTests => self.tests_written(response),
            Stage::Generate { round } => self.generated(round, response),
            Stage::Validate { round, code } => self.validated(round, code, response),
            Stage::Test { round, code } => self.tested(round, code, response),
            Stage::Deploy { .. } => self.deployed(response),
            Stage::Watch {
                function,
                version,
                replicas,
            } => self.watched(function, version, replicas, response),
            // No question was pending: nothing moves.
            other @ (Stage::Write { .. } | Stage::Version | Stage::Done) => {
                self.stage = other;
                (false, "no question was pending".to_string())
            }
        };
        self.run.stages.push(StageReport {
            stage: stage.to_string(),
            ms,
            ok,
            detail: detail.clone(),
            node: node.to_string(),
        });
        self.check_budget(stage);
        StageEvent {
            stage: stage.to_string(),
            status: if ok { "done" } else { "failed" }.into(),
            ms: Some(ms),
            detail,
            node: node.to_string(),
            progress: None,
        }
    }

    /// Ends the run now with `reason` (a deadline passed, the driver could not go on).
    pub fn abandon(&mut self, reason: String) {
        if self.stage != Stage::Done {
            self.fail(vec![reason]);
        }
    }

    fn fail(&mut self, reasons: Vec<String>) {
        self.run.outcome = RunOutcome::Failed { reasons };
        self.stage = Stage::Done;
    }

    /// A failed stage: the run ends with its reason.
    fn failed_stage(&mut self, reason: String) -> (bool, String) {
        self.fail(vec![reason.clone()]);
        (false, reason)
    }

    fn check_budget(&mut self, stage: &str) {
        let spent = self.run.tokens_in + self.run.tokens_out;
        if let Some(budget) = self.plan.token_budget
            && spent > budget
            && self.stage != Stage::Done
        {
            self.fail(vec![format!(
                "the run's token budget of {budget} is spent ({spent} tokens after stage {stage}); \
                 raise it with --token-budget"
            )]);
        }
    }

    fn interpreted(&mut self, response: AgentResponse) -> (bool, String) {
        match response {
            AgentResponse::Interpreted {
                requirement,
                tokens_in,
                tokens_out,
            } => {
                self.run.tokens_in += tokens_in;
                self.run.tokens_out += tokens_out;
                let detail = if requirement.is_freeform() {
                    format!(
                        "new function {} ({}), written by the model: {} examples",
                        requirement.function,
                        requirement.goal,
                        requirement.examples.len()
                    )
                } else {
                    format!(
                        "recipe {} ({}), function {}, confidence {:.2}",
                        requirement.recipe,
                        requirement.goal,
                        requirement.function,
                        requirement.confidence
                    )
                };
                self.run.requirement = Some((*requirement).clone());
                // The interpretation itself succeeded; the run cannot go on without an answer.
                if let Some(reason) = missing_parameters(&requirement, &self.library) {
                    self.fail(vec![reason]);
                    return (true, detail);
                }
                let mut requirement = *requirement;
                // `--update NAME` builds the next version of NAME, whatever the model named it.
                if let Some(name) = &self.plan.update {
                    requirement.function.clone_from(name);
                    if let Some(r) = self.run.requirement.as_mut() {
                        r.function.clone_from(name);
                    }
                }
                self.requirement = Some(requirement);
                self.stage = Stage::Version;
                (true, detail)
            }
            AgentResponse::NoMatch(no) => {
                let reason = no.reason.clone();
                self.run.outcome = RunOutcome::NoMatch(no);
                self.stage = Stage::Done;
                (false, reason)
            }
            other => self.failed_stage(describe(&other)),
        }
    }

    fn tests_written(&mut self, response: AgentResponse) -> (bool, String) {
        match response {
            AgentResponse::Tests {
                tests,
                tokens_in,
                tokens_out,
            } => {
                self.run.tokens_in += tokens_in;
                self.run.tokens_out += tokens_out;
                let count = |origin: &str| tests.iter().filter(|t| t.origin == origin).count();
                let (examples, written) = (count("example"), count("written"));
                let detail = format!(
                    "{} tests: {examples} from the {}'s examples{}, {} edge cases from testing templates",
                    tests.len(),
                    if self.requirement.as_ref().is_some_and(|r| r.is_freeform()) {
                        "requirement"
                    } else {
                        "recipe"
                    },
                    if written > 0 {
                        format!(", {written} written by the test generator")
                    } else {
                        String::new()
                    },
                    tests.len() - examples - written
                );
                self.tests = tests;
                self.stage = Stage::Generate { round: 0 };
                (true, detail)
            }
            other => self.failed_stage(describe(&other)),
        }
    }

    fn generated(&mut self, round: u32, response: AgentResponse) -> (bool, String) {
        match response {
            AgentResponse::Generated {
                code,
                tokens_in,
                tokens_out,
            } => {
                self.run.tokens_in += tokens_in;
                self.run.tokens_out += tokens_out;
                let detail = format!(
                    "{}@{} {}",
                    code.function,
                    code.version,
                    if code.recipe.is_empty() {
                        "written by the model".to_string()
                    } else {
                        format!("from recipe {}", code.recipe)
                    }
                );
                self.stage = Stage::Write { round, code };
                (true, detail)
            }
            other => self.failed_stage(describe(&other)),
        }
    }

    fn validated(
        &mut self,
        round: u32,
        code: Box<GeneratedCode>,
        response: AgentResponse,
    ) -> (bool, String) {
        let validation = match response {
            AgentResponse::Validated(validation) => validation,
            other => ValidationResult {
                ok: false,
                problems: vec![Problem {
                    check: "validator".into(),
                    message: describe(&other),
                    line: None,
                    column: None,
                }],
                checks: Vec::new(),
                warnings: Vec::new(),
            },
        };
        let ok = validation.ok;
        let detail = if ok {
            format!(
                "{} checks passed{}",
                validation.checks.len(),
                if validation.warnings.is_empty() {
                    String::new()
                } else {
                    format!(", {} warnings", validation.warnings.len())
                }
            )
        } else {
            failure_of(&validation, None).join("; ")
        };
        self.run.validation = Some(validation.clone());
        self.validation = Some(validation);
        if ok {
            self.stage = Stage::Test { round, code };
        } else {
            self.round_failed(round, code, None);
        }
        (ok, detail)
    }

    fn tested(
        &mut self,
        round: u32,
        code: Box<GeneratedCode>,
        response: AgentResponse,
    ) -> (bool, String) {
        let result = match response {
            AgentResponse::Tested(result) => result,
            other => TestResult {
                passed: 0,
                failed: u32::try_from(self.tests.len()).unwrap_or(u32::MAX),
                cases: vec![CaseResult {
                    name: "test run".into(),
                    passed: false,
                    detail: Some(describe(&other)),
                    feedback: Some(describe(&other)),
                }],
            },
        };
        let ok = result.ok();
        let detail = format!("{} passed, {} failed", result.passed, result.failed);
        self.run.tests = Some(result.clone());
        if ok {
            self.stage = if self.plan.deploy {
                Stage::Deploy { code }
            } else {
                self.run.outcome = RunOutcome::Built {
                    function: code.function.clone(),
                    version: code.version.clone(),
                };
                Stage::Done
            };
        } else {
            self.round_failed(round, code, Some(&result));
        }
        (ok, detail)
    }

    /// A round's code failed validation or tests: repair, or give up saying why.
    fn round_failed(&mut self, round: u32, code: Box<GeneratedCode>, tests: Option<&TestResult>) {
        let failure = match &self.validation {
            Some(validation) => failure_of(validation, tests),
            None => Vec::new(),
        };
        let give_up = if self.last_failure.as_ref() == Some(&failure) {
            Some(format!(
                "the same failure repeated after repair round {round}; stopped early"
            ))
        } else if round >= MAX_REPAIRS {
            Some(format!("still failing after {MAX_REPAIRS} repair rounds"))
        } else {
            None
        };
        if let Some(why) = give_up {
            self.fail(std::iter::once(why).chain(failure).collect());
            return;
        }
        self.run.repairs += 1;
        self.feedback = failure.clone();
        self.last_failure = Some(failure);
        self.previous = Some(code);
        self.stage = Stage::Generate { round: round + 1 };
    }

    fn deployed(&mut self, response: AgentResponse) -> (bool, String) {
        match response {
            AgentResponse::Deployed {
                function,
                version,
                replicas,
                canary,
            } => {
                let detail = if canary {
                    format!(
                        "{function}@{version} as a canary on one node beside the served version, \
                         answering; the Monitor promotes it or rolls it back"
                    )
                } else {
                    format!("{function}@{version} with {replicas} replicas, answering")
                };
                self.stage = Stage::Watch {
                    function,
                    version,
                    replicas,
                };
                (true, detail)
            }
            other => self.failed_stage(describe(&other)),
        }
    }

    fn watched(
        &mut self,
        function: String,
        version: String,
        replicas: u32,
        response: AgentResponse,
    ) -> (bool, String) {
        let watching = matches!(response, AgentResponse::Watching);
        let detail = if watching {
            "error rate and latency watched; a misbehaving version is rolled back".into()
        } else {
            describe(&response)
        };
        // Deployed either way: the function answers; only the watching failed.
        self.run.outcome = RunOutcome::Deployed {
            function,
            version,
            replicas,
        };
        self.stage = Stage::Done;
        (watching, detail)
    }
}

/// The version after the highest of `published`: the next minor for new behaviour (`update`),
/// else the next patch; `None` when nothing is published (the requirement keeps its own).
pub fn next_version(published: &[semver::Version], update: bool) -> Option<semver::Version> {
    let highest = published.iter().max()?;
    Some(if update {
        semver::Version::new(highest.major, highest.minor + 1, 0)
    } else {
        semver::Version::new(highest.major, highest.minor, highest.patch + 1)
    })
}

/// A recipe parameter without a default that the request did not give: asked for, not guessed.
fn missing_parameters(requirement: &TechnicalRequirement, library: &Library) -> Option<String> {
    if requirement.is_freeform() {
        return None;
    }
    let (_, recipe) = library.recipe(&requirement.recipe).ok()?;
    let missing: Vec<String> = recipe
        .parameters
        .iter()
        .filter(|p| p.default.is_none() && !requirement.params.contains_key(&p.name))
        .map(|p| {
            let hint = match p.kind {
                ParamType::Function => " (name it in the request, e.g. \"… to the NAME function\")",
                _ => "",
            };
            format!("`{}`: {}{hint}", p.name, p.description)
        })
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "recipe {} needs what the request does not say: {}",
            recipe.name,
            missing.join("; ")
        )
    })
}

/// What went wrong with a round's code, as lines the generator gets back: the validator's
/// problems, and the names of failed tests with their feedback, which never carries the expected
/// output (a case without feedback says only that it failed).
pub fn failure_of(validation: &ValidationResult, tests: Option<&TestResult>) -> Vec<String> {
    let mut lines: Vec<String> = validation
        .problems
        .iter()
        .map(|p| match (p.line, p.column) {
            (Some(line), Some(column)) => {
                format!("{} (line {line}, column {column}): {}", p.check, p.message)
            }
            _ => format!("{}: {}", p.check, p.message),
        })
        .collect();
    if let Some(tests) = tests {
        lines.extend(tests.cases.iter().filter(|c| !c.passed).map(|c| {
            format!(
                "test {:?} failed: {}",
                c.name,
                c.feedback.as_deref().unwrap_or("it failed")
            )
        }));
    }
    lines
}

/// A response the pipeline did not expect, in words.
pub fn describe(response: &AgentResponse) -> String {
    match response {
        AgentResponse::Failed { agent, reason, .. } => format!("{}: {reason}", agent.as_str()),
        other => format!(
            "unexpected answer: {}",
            serde_json::to_string(other).unwrap_or_else(|e| format!("(unprintable: {e})"))
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{NoMatch, Problem};
    use crate::providers::{Interpretation, offline};

    fn run() -> ChefRun {
        ChefRun {
            run_id: "r".into(),
            request: "Analyze market data and find opportunities".into(),
            provider: "offline".into(),
            outcome: RunOutcome::Failed {
                reasons: Vec::new(),
            },
            requirement: None,
            code_dir: None,
            validation: None,
            tests: None,
            stages: Vec::new(),
            repairs: 0,
            tokens_in: 0,
            tokens_out: 0,
            total_ms: 0,
            started_unix_ms: 0,
        }
    }

    fn cooking(deploy: bool, token_budget: Option<u64>) -> Cooking {
        Cooking::new(
            run(),
            Plan {
                deploy,
                replicas: 2,
                token_budget,
                create_secrets: false,
                update: None,
                perf: PerfMode::Fail,
            },
            Arc::new(Library::shipped()),
        )
    }

    fn requirement(request: &str) -> TechnicalRequirement {
        match offline::interpret(request, &Library::shipped()) {
            Interpretation::Requirement(r) => *r,
            Interpretation::NoMatch(no) => panic!("no recipe for {request}: {no:?}"),
        }
    }

    fn code(round: u32) -> GeneratedCode {
        GeneratedCode {
            function: "market-analysis".into(),
            version: "1.0.0".into(),
            recipe: "market-analysis".into(),
            files: Default::default(),
            round,
            fixtures: Default::default(),
        }
    }

    fn test_case() -> TestCase {
        TestCase {
            name: "example".into(),
            origin: "example".into(),
            input: serde_json::json!({"x": 1}),
            expect: Some(serde_json::json!({"y": 2})),
            error: None,
            output_schema: None,
        }
    }

    fn valid(ok: bool, message: &str) -> AgentResponse {
        AgentResponse::Validated(ValidationResult {
            ok,
            problems: if ok {
                Vec::new()
            } else {
                vec![Problem {
                    check: "static".into(),
                    message: message.into(),
                    line: Some(3),
                    column: Some(7),
                }]
            },
            checks: vec![("static analysis".into(), ok)],
            warnings: Vec::new(),
        })
    }

    fn tested(failed: &[&str]) -> AgentResponse {
        AgentResponse::Tested(TestResult {
            passed: 3,
            failed: u32::try_from(failed.len()).unwrap_or(0),
            cases: failed
                .iter()
                .map(|name| CaseResult {
                    name: (*name).into(),
                    passed: false,
                    detail: Some("expected {\"y\":2}, got {\"y\":3}".into()),
                    feedback: Some("the output differs".into()),
                })
                .collect(),
        })
    }

    /// Answers the pending question with `response`, checking it was asked of `role`.
    fn answer(c: &mut Cooking, role: AgentType, response: AgentResponse) -> StageEvent {
        let Next::Ask {
            stage, role: asked, ..
        } = c.next()
        else {
            panic!("expected a question, the machine is at {:?}", c.stage());
        };
        assert_eq!(asked, role, "at stage {stage}");
        c.answer(&stage, response, 5, "n1")
    }

    fn interpreted(c: &mut Cooking, requirement: TechnicalRequirement, tokens: u64) {
        interpreted_with(c, requirement, tokens, &[]);
    }

    /// Interprets, then answers the version lookup with `published`.
    fn interpreted_with(
        c: &mut Cooking,
        requirement: TechnicalRequirement,
        tokens: u64,
        published: &[semver::Version],
    ) {
        let event = answer(
            c,
            AgentType::RequirementInterpreter,
            AgentResponse::Interpreted {
                requirement: Box::new(requirement),
                tokens_in: tokens,
                tokens_out: tokens,
            },
        );
        assert_eq!(event.status, "done", "{event:?}");
        if let Next::Versions { .. } = c.next() {
            c.versioned(published, Some(code(0)));
        }
    }

    fn through_tests(c: &mut Cooking) {
        interpreted(
            c,
            requirement("Analyze market data and find opportunities"),
            0,
        );
        answer(
            c,
            AgentType::TestGenerator,
            AgentResponse::Tests {
                tests: vec![test_case()],
                tokens_in: 0,
                tokens_out: 0,
            },
        );
    }

    fn generate(c: &mut Cooking, round: u32) {
        answer(
            c,
            AgentType::CodeGenerator,
            AgentResponse::Generated {
                code: Box::new(code(round)),
                tokens_in: 0,
                tokens_out: 0,
            },
        );
        assert!(matches!(c.next(), Next::Write(_)), "{:?}", c.stage());
        c.written(Some(format!("/data/chef/r/round{round}")));
    }

    #[test]
    fn a_good_run_walks_every_stage_in_order_and_deploys() {
        let mut c = cooking(true, None);
        through_tests(&mut c);
        generate(&mut c, 0);
        answer(&mut c, AgentType::CodeValidator, valid(true, ""));
        answer(&mut c, AgentType::TestGenerator, tested(&[]));
        answer(
            &mut c,
            AgentType::DeploymentManager,
            AgentResponse::Deployed {
                function: "market-analysis".into(),
                version: "1.0.0".into(),
                replicas: 2,
                canary: false,
            },
        );
        answer(&mut c, AgentType::Monitor, AgentResponse::Watching);
        assert_eq!(c.next(), Next::Done);
        let run = c.into_run();
        assert_eq!(
            run.outcome,
            RunOutcome::Deployed {
                function: "market-analysis".into(),
                version: "1.0.0".into(),
                replicas: 2
            }
        );
        let stages: Vec<&str> = run.stages.iter().map(|s| s.stage.as_str()).collect();
        assert_eq!(
            stages,
            [
                "interpret",
                "write tests",
                "generate",
                "validate",
                "test",
                "deploy",
                "monitor"
            ]
        );
        assert!(run.stages.iter().all(|s| s.ok && s.node == "n1"));
        assert_eq!(run.code_dir.as_deref(), Some("/data/chef/r/round0"));
        assert!(
            run.stages[2]
                .detail
                .ends_with("written to /data/chef/r/round0")
        );
    }

    #[test]
    fn versions_follow_what_is_published() {
        let v = |s: &str| semver::Version::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(next_version(&[], true), None);
        assert_eq!(next_version(&[v("1.0.0")], false), Some(v("1.0.1")));
        assert_eq!(
            next_version(&[v("1.0.0"), v("1.2.3")], true),
            Some(v("1.3.0"))
        );
        assert_eq!(
            next_version(&[v("1.2.3"), v("1.0.0")], false),
            Some(v("1.2.4"))
        );

        // A new function keeps its own version; a rebuild of one that exists is a patch.
        let mut fresh = cooking(true, None);
        interpreted(
            &mut fresh,
            requirement("Analyze market data and find opportunities"),
            0,
        );
        assert_eq!(
            fresh.requirement.as_ref().map(|r| r.version.as_str()),
            Some("")
        );
        let mut again = cooking(true, None);
        interpreted_with(
            &mut again,
            requirement("Analyze market data and find opportunities"),
            0,
            &[v("1.0.0")],
        );
        assert_eq!(
            again.requirement.as_ref().map(|r| r.version.as_str()),
            Some("1.0.1")
        );
        assert_eq!(again.previous, None, "a rebuild starts from scratch");
    }

    #[test]
    fn an_update_builds_the_next_minor_of_the_named_function_from_its_current_package() {
        let mut c = cooking(true, None);
        c.plan.update = Some("scout".into());
        interpreted_with(
            &mut c,
            requirement("Analyze market data and find opportunities"),
            0,
            &[semver::Version::new(1, 2, 0)],
        );
        let r = c
            .requirement
            .clone()
            .unwrap_or_else(|| panic!("no requirement"));
        assert_eq!(
            (r.function.as_str(), r.version.as_str()),
            ("scout", "1.3.0")
        );
        assert_eq!(
            c.previous,
            Some(Box::new(code(0))),
            "it starts from the current package"
        );

        let mut missing = cooking(true, None);
        missing.plan.update = Some("ghost".into());
        interpreted_with(
            &mut missing,
            requirement("Analyze market data and find opportunities"),
            0,
            &[],
        );
        assert_eq!(missing.next(), Next::Done);
        let RunOutcome::Failed { reasons } = &missing.run().outcome else {
            panic!("{:?}", missing.run().outcome);
        };
        assert!(
            reasons[0].contains("no function named ghost is published"),
            "{reasons:?}"
        );
    }

    #[test]
    fn without_deploy_a_tested_package_is_built() {
        let mut c = cooking(false, None);
        through_tests(&mut c);
        generate(&mut c, 0);
        answer(&mut c, AgentType::CodeValidator, valid(true, ""));
        answer(&mut c, AgentType::TestGenerator, tested(&[]));
        assert_eq!(c.next(), Next::Done);
        assert!(matches!(c.run().outcome, RunOutcome::Built { .. }));
    }

    #[test]
    fn no_matching_recipe_ends_the_run_honestly() {
        let mut c = cooking(true, None);
        let event = answer(
            &mut c,
            AgentType::RequirementInterpreter,
            AgentResponse::NoMatch(NoMatch {
                request: "write a poem".into(),
                reason: "no recipe writes poems".into(),
                closest: Vec::new(),
            }),
        );
        assert_eq!(event.status, "failed");
        assert_eq!(c.next(), Next::Done);
        assert!(matches!(c.run().outcome, RunOutcome::NoMatch(_)));
    }

    #[test]
    fn a_parameter_the_request_does_not_give_is_asked_for() {
        let mut c = cooking(true, None);
        let mut webhook = requirement("route incoming webhooks by event type");
        webhook.params.remove("sink");
        interpreted(&mut c, webhook, 0);
        assert_eq!(c.next(), Next::Done);
        let RunOutcome::Failed { reasons } = &c.run().outcome else {
            panic!("{:?}", c.run().outcome);
        };
        assert!(
            reasons[0].contains("needs what the request does not say: `sink`"),
            "{reasons:?}"
        );
    }

    #[test]
    fn a_failing_round_is_repaired_with_the_failures_and_the_previous_code() {
        let mut c = cooking(true, None);
        through_tests(&mut c);
        generate(&mut c, 0);
        answer(&mut c, AgentType::CodeValidator, valid(true, ""));
        answer(&mut c, AgentType::TestGenerator, tested(&["sums"]));
        let Next::Ask {
            stage,
            message: AgentMessage::Generate { attempt, .. },
            ..
        } = c.next()
        else {
            panic!("no repair at {:?}", c.stage());
        };
        assert_eq!(stage, "generate (repair 1)");
        assert_eq!(attempt.round, 1);
        assert_eq!(
            attempt.feedback,
            ["test \"sums\" failed: the output differs"]
        );
        assert_eq!(attempt.previous, Some(code(0)));
        assert_eq!(c.run().repairs, 1);
    }

    #[test]
    fn the_same_failure_twice_stops_early_and_says_so() {
        let mut c = cooking(true, None);
        through_tests(&mut c);
        for round in 0..2 {
            generate(&mut c, round);
            answer(
                &mut c,
                AgentType::CodeValidator,
                valid(false, "eval is not allowed"),
            );
        }
        assert_eq!(c.next(), Next::Done);
        let RunOutcome::Failed { reasons } = &c.run().outcome else {
            panic!("{:?}", c.run().outcome);
        };
        assert_eq!(
            reasons,
            &[
                "the same failure repeated after repair round 1; stopped early".to_string(),
                "static (line 3, column 7): eval is not allowed".to_string()
            ]
        );
    }

    #[test]
    fn repairs_are_bounded() {
        let mut c = cooking(true, None);
        through_tests(&mut c);
        for round in 0..=MAX_REPAIRS {
            generate(&mut c, round);
            answer(
                &mut c,
                AgentType::CodeValidator,
                valid(false, &format!("problem {round}")),
            );
        }
        assert_eq!(c.next(), Next::Done);
        let RunOutcome::Failed { reasons } = &c.run().outcome else {
            panic!("{:?}", c.run().outcome);
        };
        assert_eq!(
            reasons[0],
            format!("still failing after {MAX_REPAIRS} repair rounds")
        );
        assert_eq!(c.run().repairs, MAX_REPAIRS);
    }

    #[test]
    fn an_agent_failure_ends_the_run_with_its_reason() {
        let mut c = cooking(true, None);
        through_tests(&mut c);
        generate(&mut c, 0);
        answer(&mut c, AgentType::CodeValidator, valid(true, ""));
        answer(&mut c, AgentType::TestGenerator, tested(&[]));
        let event = answer(
            &mut c,
            AgentType::DeploymentManager,
            AgentResponse::failed(AgentType::DeploymentManager, "publishing failed: conflict"),
        );
        assert_eq!(event.status, "failed");
        assert_eq!(
            c.run().outcome,
            RunOutcome::Failed {
                reasons: vec!["deployment-manager: publishing failed: conflict".into()]
            }
        );
    }

    #[test]
    fn a_run_over_its_token_budget_fails_naming_the_stage() {
        let mut c = cooking(true, Some(100));
        interpreted(
            &mut c,
            requirement("Analyze market data and find opportunities"),
            60,
        );
        assert_eq!(c.next(), Next::Done);
        let RunOutcome::Failed { reasons } = &c.run().outcome else {
            panic!("{:?}", c.run().outcome);
        };
        assert!(
            reasons[0].contains("token budget of 100 is spent (120 tokens after stage interpret)"),
            "{reasons:?}"
        );
    }

    #[test]
    fn an_abandoned_run_fails_with_the_reason_and_a_finished_one_stays_as_it_was() {
        let mut c = cooking(false, None);
        c.abandon("deadline passed".into());
        assert_eq!(c.next(), Next::Done);
        assert_eq!(
            c.run().outcome,
            RunOutcome::Failed {
                reasons: vec!["deadline passed".into()]
            }
        );
        c.abandon("again".into());
        assert_eq!(
            c.run().outcome,
            RunOutcome::Failed {
                reasons: vec!["deadline passed".into()]
            }
        );
    }
}
