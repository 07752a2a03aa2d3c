//! Ingredients (docs/ingredients.md): reusable data, not code, that recipes combine into function packages.
//!
//! Six kinds, one TOML file per ingredient, each with a strict schema:
//!
//! | kind | what it holds | module |
//! |---|---|---|
//! | `model` | a model configuration: provider, model, parameters, price per 1k tokens (or a local linear/logistic model) | [`kinds`] |
//! | `data-flow` | ordered steps for `BaseDataProcessor` or `BaseWorkflowEngine` | [`kinds`] |
//! | `api` | routes, rate limits, connector targets | [`kinds`] |
//! | `security` | auth scheme, policies, encrypted fields | [`kinds`] |
//! | `testing` | edge-case generators applied to an input schema, each with its expected outcome | [`kinds`], [`edge_cases`] |
//! | `recipe` | metadata, parameters, the ingredients used, schemas, examples and a template folder | [`kinds`], [`render`] |
//!
//! The shipped ingredients (`actors/chef/ingredients/`) are embedded in the binary; users
//! add folders of their own, whose ingredients override shipped ones of the same name ([`loader`]).
//! A malformed file is reported with its path and the field at fault, and the others still load.

pub mod edge_cases;
pub mod expectations;
pub mod kinds;
pub mod loader;
pub mod render;
pub mod schema;

pub use kinds::{Body, Ingredient, Kind, Origin};
pub use loader::{Library, LoadError};
pub use render::{RenderError, RenderRequest, RenderedPackage};

/// What is wrong with one ingredient file: the file, the field (a dotted path such as
/// `parameters[1].default`) and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum IngredientError {
    #[error("{file}: field `{field}`: {message}")]
    Field {
        file: String,
        field: String,
        message: String,
    },
    #[error("{file}: {message}")]
    File { file: String, message: String },
}

impl IngredientError {
    pub fn field(file: &str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Field {
            file: file.to_string(),
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn file(file: &str, message: impl Into<String>) -> Self {
        Self::File {
            file: file.to_string(),
            message: message.into(),
        }
    }

    /// The file the error is about.
    pub fn path(&self) -> &str {
        match self {
            Self::Field { file, .. } | Self::File { file, .. } => file,
        }
    }
}

/// Whether `name` is a valid ingredient (or function) name: 1 to 64 of `a-z 0-9 -`, starting with a
/// letter.
pub fn is_valid_name(name: &str) -> bool {
    klf_functions::package::is_valid_name(name)
}
