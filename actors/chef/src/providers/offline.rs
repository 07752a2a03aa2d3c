//! The offline provider: BM25 over the recipes, parameters read out of the request, the chosen
//! recipe rendered. No network, no model, deterministic — and honest when nothing fits.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use super::{Costed, Interpretation, Provider, ProviderError, render_requirement, requirement_for};
use crate::agents::RunContext;
use crate::bm25::{self, Index};
use crate::ingredients::kinds::{Body, ParamType, Parameter, Recipe, coerce};
use crate::ingredients::{Kind, Library};
use crate::messages::{Attempt, Candidate, GeneratedCode, NoMatch, TechnicalRequirement};
use futures_util::future::BoxFuture;

/// The lowest BM25 score that counts as a match. Calibrated on the shipped recipes: requests for
/// a recipe, however worded, score 4 and up; unrelated requests score 0 to 2 (see the tests).
pub const MIN_SCORE: f64 = 3.0;
/// How many of the closest recipes a "no match" lists.
const CLOSEST: usize = 3;
/// Words around a number that may name its parameter.
const CONTEXT_BEFORE: usize = 3;
const CONTEXT_AFTER: usize = 2;

/// The offline provider.
#[derive(Debug, Default, Clone)]
pub struct Offline;

/// Ranks the library's recipes against `request`.
pub fn rank(request: &str, library: &Library) -> Vec<(Candidate, Recipe)> {
    let recipes: Vec<&Recipe> = library
        .list(Some(Kind::Recipe))
        .filter_map(|ingredient| match &ingredient.body {
            Body::Recipe(recipe) => Some(recipe.as_ref()),
            _ => None,
        })
        .collect();
    let index = Index::new(recipes.iter().enumerate().map(|(i, recipe)| {
        (
            i,
            vec![
                (recipe.title.clone(), 3.0),
                (recipe.name.replace('-', " "), 2.0),
                (recipe.keywords.join(" "), 2.0),
                (recipe.synonyms.join(" "), 2.0),
                (recipe.description.clone(), 1.0),
            ],
        )
    }));
    index
        .search(request)
        .into_iter()
        .filter_map(|hit| {
            let recipe = recipes.get(hit.key)?;
            Some((
                Candidate {
                    recipe: recipe.name.clone(),
                    title: recipe.title.clone(),
                    score: (hit.score * 100.0).round() / 100.0,
                    matched: hit.matched,
                },
                (*recipe).clone(),
            ))
        })
        .collect()
}

/// A word of the request, as written and as BM25 sees it.
struct Word {
    raw: String,
    stems: Vec<String>,
}

fn words(request: &str) -> Vec<Word> {
    request
        .split_whitespace()
        .map(|raw| {
            let raw = raw
                .trim_matches(|c: char| ",;:!?()[]{}\"'".contains(c))
                .trim_end_matches('.')
                .to_string();
            let stems = bm25::tokens(&raw);
            Word { raw, stems }
        })
        .filter(|w| !w.raw.is_empty())
        .collect()
}

fn number(raw: &str) -> Option<f64> {
    if let Some(percent) = raw.strip_suffix('%') {
        return percent.parse::<f64>().ok().map(|p| p / 100.0);
    }
    raw.parse::<f64>().ok().filter(|n| n.is_finite())
}

/// `value` as JSON: an integer when it is one (so integer parameters accept it).
fn json_number(value: f64) -> Value {
    if value.fract() == 0.0 && value.abs() < 9.0e15 {
        Value::from(value as i64)
    } else {
        Value::from(value)
    }
}

/// How strongly `context` (stemmed words near a number) names parameter `p`.
fn affinity(p: &Parameter, context: &[String]) -> u32 {
    let name: Vec<String> = p.name.split('_').flat_map(bm25::tokens).collect();
    let description = bm25::tokens(&p.description);
    context
        .iter()
        .map(|word| {
            if name.contains(word) {
                3
            } else if description.contains(word) {
                1
            } else {
                0
            }
        })
        .sum()
}

/// Whether a word of parameter `p`'s own name is among `context`.
fn named(p: &Parameter, context: &[String]) -> bool {
    p.name
        .split('_')
        .flat_map(bm25::tokens)
        .any(|word| context.contains(&word))
}

/// What the request asks of a recipe that the recipe does not support: a parameter named
/// outright with a value outside its range.
#[derive(Debug, Clone, PartialEq)]
pub struct Unsupported {
    pub parameter: String,
    /// `window = 500 is above the maximum 100 for recipe metric-anomalies (allowed 2 to 100)`.
    pub reason: String,
}

/// The values `p` allows, in words: `2 to 100`, `0.5 or more`, `one of ",", ";"`.
fn allowed(p: &Parameter) -> Option<String> {
    match (&p.choices, p.min, p.max) {
        (Some(choices), _, _) => Some(format!(
            "one of {}",
            choices
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )),
        (None, Some(min), Some(max)) => Some(format!("{min} to {max}")),
        (None, Some(min), None) => Some(format!("{min} or more")),
        (None, None, Some(max)) => Some(format!("up to {max}")),
        (None, None, None) => None,
    }
}

/// Why `value`, asked for parameter `p` of `recipe`, is refused.
fn unsupported(recipe: &Recipe, p: &Parameter, value: f64) -> Unsupported {
    let what = match (p.min, p.max) {
        (Some(min), _) if value < min => format!("is below the minimum {min}"),
        (_, Some(max)) if value > max => format!("is above the maximum {max}"),
        _ if p.kind == ParamType::Integer && value.fract() != 0.0 => {
            "is not a whole number".to_string()
        }
        _ => "is not a value it takes".to_string(),
    };
    let range = allowed(p).map_or_else(String::new, |a| format!(" (allowed {a})"));
    Unsupported {
        parameter: p.name.clone(),
        reason: format!(
            "{} = {value} {what} for recipe {}{range}",
            p.name, recipe.name
        ),
    }
}

/// What a request states for a recipe: parameter values, the names of the parameters read out of
/// it, and the function's name.
pub type Stated = (BTreeMap<String, Value>, Vec<String>, Option<String>);

/// Parameter values the request states: numbers next to words that name a parameter, choices
/// named outright, and the function's name after "called" or "named".
///
/// A number next to a parameter's own name that the parameter does not take is refused rather
/// than dropped: "a window of 500" must not quietly become the default window. A number only near
/// words of a parameter's description may mean something else ("the last 5000 points"), so an
/// out-of-range one there is left alone.
pub fn extract(request: &str, recipe: &Recipe) -> Result<Stated, Unsupported> {
    let words = words(request);
    let mut params = BTreeMap::new();
    for (i, word) in words.iter().enumerate() {
        let Some(value) = number(&word.raw) else {
            continue;
        };
        let context: Vec<String> = words[i.saturating_sub(CONTEXT_BEFORE)..i]
            .iter()
            .chain(words.iter().skip(i + 1).take(CONTEXT_AFTER))
            .flat_map(|w| w.stems.iter().cloned())
            .collect();
        let best = recipe
            .parameters
            .iter()
            .filter(|p| matches!(p.kind, ParamType::Integer | ParamType::Number))
            .filter(|p| !params.contains_key(&p.name))
            .map(|p| (affinity(p, &context), p))
            .filter(|(score, _)| *score >= 2)
            .max_by_key(|(score, _)| *score);
        if let Some((_, p)) = best {
            match coerce(p, &json_number(value)) {
                Ok(coerced) => {
                    params.insert(p.name.clone(), coerced);
                }
                Err(_) if named(p, &context) => return Err(unsupported(recipe, p, value)),
                Err(_) => {}
            }
        }
    }
    for p in &recipe.parameters {
        if params.contains_key(&p.name) {
            continue;
        }
        if let Some(choices) = &p.choices
            && let Some(choice) = choices.iter().find(|choice| {
                choice
                    .as_str()
                    .is_some_and(|c| words.iter().any(|w| w.raw.eq_ignore_ascii_case(c)))
            })
        {
            params.insert(p.name.clone(), choice.clone());
        }
    }
    // A function parameter: "the NAME function" or "function NAME" (an existing function the new
    // one calls). Only when the recipe has exactly one such parameter, so it is unambiguous.
    let function_params: Vec<&Parameter> = recipe
        .parameters
        .iter()
        .filter(|p| matches!(p.kind, ParamType::Function))
        .collect();
    if let [p] = function_params.as_slice() {
        let named = (0..words.len()).find_map(|i| {
            let word = words[i].raw.to_lowercase();
            if word != "function" {
                return None;
            }
            let before = i.checked_sub(1).map(|j| words[j].raw.to_lowercase());
            let after = words.get(i + 1).map(|w| w.raw.to_lowercase());
            [before, after].into_iter().flatten().find(|name| {
                klf_functions::package::is_valid_name(name)
                    && !matches!(
                        name.as_str(),
                        "the" | "a" | "an" | "this" | "that" | "my" | "it"
                    )
            })
        });
        if let Some(name) = named
            && let Ok(value) = coerce(p, &Value::from(name))
        {
            params.insert(p.name.clone(), value);
        }
    }
    // "called NAME", "named NAME", "call it NAME", "name it NAME".
    let lowered: Vec<String> = words.iter().map(|w| w.raw.to_lowercase()).collect();
    let function = (0..lowered.len()).find_map(|i| {
        let at = match lowered[i].as_str() {
            "called" | "named" => i + 1,
            "call" | "name" if lowered.get(i + 1).is_some_and(|w| w == "it") => i + 2,
            _ => return None,
        };
        lowered
            .get(at)
            .filter(|name| klf_functions::package::is_valid_name(name))
            .cloned()
    });
    let extracted = params.keys().cloned().collect();
    Ok((params, extracted, function))
}

/// The offline interpretation of `request`.
pub fn interpret(request: &str, library: &Library) -> Interpretation {
    let ranked = rank(request, library);
    let candidates: Vec<Candidate> = ranked.iter().map(|(c, _)| c.clone()).collect();
    let Some((best, recipe)) = ranked.first() else {
        return Interpretation::NoMatch(NoMatch {
            request: request.to_string(),
            reason: "no recipe shares a meaningful word with the request".into(),
            closest: Vec::new(),
        });
    };
    if best.score < MIN_SCORE {
        return Interpretation::NoMatch(NoMatch {
            request: request.to_string(),
            reason: format!(
                "no recipe fits well enough: the closest, {} ({}), scores {:.2} where {MIN_SCORE} is needed",
                best.recipe, best.title, best.score
            ),
            closest: candidates.into_iter().take(CLOSEST).collect(),
        });
    }
    let second = candidates.get(1).map_or(0.0, |c| c.score);
    // Sure when the best is far ahead of the runner-up and of the threshold.
    let confidence = ((best.score - second) / best.score).clamp(0.0, 1.0) * 0.5
        + ((best.score - MIN_SCORE) / best.score).clamp(0.0, 1.0) * 0.5;
    // A recipe that cannot do what is asked does not fit the request: the run ends here, before
    // any code exists, with the range the user can choose from.
    let (params, extracted, function) = match extract(request, recipe) {
        Ok(found) => found,
        Err(unsupported) => {
            return Interpretation::NoMatch(NoMatch {
                request: request.to_string(),
                reason: unsupported.reason,
                closest: candidates.into_iter().take(CLOSEST).collect(),
            });
        }
    };
    Interpretation::Requirement(Box::new(requirement_for(
        request,
        recipe,
        function,
        params,
        extracted,
        (confidence * 100.0).round() / 100.0,
        candidates.into_iter().skip(1).take(CLOSEST).collect(),
    )))
}

impl Provider for Offline {
    fn name(&self) -> &'static str {
        "offline"
    }

    fn interpret(
        &self,
        request: String,
        library: Arc<Library>,
        _deployed: Vec<super::Deployed>,
        _cx: RunContext,
    ) -> BoxFuture<'static, Result<Costed<Interpretation>, ProviderError>> {
        Box::pin(async move { Ok(Costed::free(interpret(&request, &library))) })
    }

    fn generate(
        &self,
        requirement: TechnicalRequirement,
        attempt: Attempt,
        library: Arc<Library>,
        _cx: RunContext,
    ) -> BoxFuture<'static, Result<Costed<GeneratedCode>, ProviderError>> {
        // Rendering is deterministic: a repair round renders the same package, so a failure that
        // repeats stops the repairs early (the pipeline sees the same failure twice).
        Box::pin(async move {
            render_requirement(&requirement, attempt.round, &library).map(Costed::free)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn library() -> Library {
        Library::shipped()
    }

    fn recipe_of(request: &str) -> Result<TechnicalRequirement, NoMatch> {
        match interpret(request, &library()) {
            Interpretation::Requirement(r) => Ok(*r),
            Interpretation::NoMatch(n) => Err(n),
        }
    }

    #[test]
    fn differently_worded_requests_find_their_recipes() {
        for (request, recipe) in [
            (
                "Analyze market data and find opportunities",
                "market-analysis",
            ),
            (
                "which stocks look like good buys given recent closing prices",
                "market-analysis",
            ),
            (
                "flag spikes and outliers in my latency metrics",
                "metric-anomalies",
            ),
            (
                "clean up customer records: drop invalid rows and normalise fields",
                "record-cleaning",
            ),
            ("turn CSV text into JSON objects", "csv-to-json"),
            (
                "route incoming webhooks to the right handler",
                "webhook-router",
            ),
            (
                "check bearer tokens and decide who may access what",
                "token-check",
            ),
            (
                "encrypt the sensitive fields of a record",
                "field-encryption",
            ),
            ("send me a scheduled daily report", "scheduled-report"),
            (
                "fan out work to several functions and merge the results",
                "fan-out-fan-in",
            ),
            (
                "approve or reject loan applications with business rules",
                "rule-decisions",
            ),
            (
                "call an external API function without exceeding its rate limit",
                "rate-limited-call",
            ),
            (
                "take orders through a workflow from payment to shipping",
                "order-workflow",
            ),
            (
                "learn from observations online and forecast the next value",
                "online-forecast",
            ),
        ] {
            match recipe_of(request) {
                Ok(requirement) => assert_eq!(requirement.recipe, recipe, "{request}"),
                Err(no) => panic!("{request}: {no:?}"),
            }
        }
    }

    #[test]
    fn unrelated_requests_are_answered_honestly_with_the_closest_recipes() {
        for request in [
            "write a poem about the sea",
            "book me a flight to Lisbon",
            "",
            "make the coffee stronger",
        ] {
            let no = recipe_of(request).expect_err(request);
            assert!(!no.reason.is_empty());
            assert!(no.closest.len() <= CLOSEST);
        }
    }

    #[test]
    fn parameters_come_from_the_request_within_their_bounds() {
        let requirement =
            recipe_of("Analyze market data and find opportunities: the top 3 over a window of 30 closes, call it market-scout")
                .expect("market");
        assert_eq!(requirement.params["top"], serde_json::json!(3));
        assert_eq!(requirement.params["window"], serde_json::json!(30));
        assert_eq!(requirement.function, "market-scout");
        assert_eq!(requirement.extracted, vec!["top", "window"]);
    }

    #[test]
    fn a_parameter_named_with_a_value_the_recipe_does_not_take_is_refused_with_its_range() {
        for (request, reason) in [
            (
                "Flag unusual spikes in server CPU usage readings with a window of 500",
                "window = 500 is above the maximum 100 for recipe metric-anomalies (allowed 2 to 100)",
            ),
            (
                "Flag unusual spikes in server CPU usage readings with a window of 1",
                "window = 1 is below the minimum 2 for recipe metric-anomalies (allowed 2 to 100)",
            ),
            (
                "Flag unusual spikes in server CPU usage readings with a window of 4.5",
                "window = 4.5 is not a whole number for recipe metric-anomalies (allowed 2 to 100)",
            ),
            (
                "find market opportunities, top 500",
                "top = 500 is above the maximum 50 for recipe market-analysis (allowed 1 to 50)",
            ),
        ] {
            let no = recipe_of(request).expect_err(request);
            assert_eq!(no.reason, reason);
            assert_eq!(
                no.closest.first().map(|c| c.recipe.as_str()),
                reason
                    .split("recipe ")
                    .nth(1)
                    .and_then(|r| r.split(' ').next())
            );
        }
        // In range: taken.
        let requirement =
            recipe_of("Flag unusual spikes in server CPU usage readings with a window of 30")
                .expect("in range");
        assert_eq!(requirement.params["window"], serde_json::json!(30));
        // A number only near words of a description may be about something else: left alone.
        let requirement =
            recipe_of("flag anomalies among the last 5000 points of my latency metrics")
                .expect("metrics");
        assert_eq!(requirement.params["window"], serde_json::json!(5));
        assert!(requirement.extracted.is_empty(), "{:?}", requirement.params);
    }
}
