//! Loading ingredients: the shipped ones (embedded from `actors/chef/ingredients/`) and
//! the user's folders, in order; a later ingredient with the same name overrides an earlier one (and
//! says so). Every `*.toml` file is one ingredient, except files inside folders named `template` or
//! `templates` (a recipe's template folder). A file that fails to load is kept in the report, with
//! its path and the field at fault, and everything else still loads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use include_dir::{Dir, include_dir};
use serde::Serialize;
use tracing::warn;

use super::IngredientError;
use super::kinds::{self, Body, Ingredient, Kind, Origin};

/// The shipped ingredients.
static SHIPPED: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/ingredients");

/// Largest ingredient or template file read.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Why a library could not be used at all (individual files never fail the whole load).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("no ingredient named {name}{hint}")]
    NotFound { name: String, hint: String },
    #[error("{name} is a {kind} ingredient, not a recipe")]
    NotARecipe { name: String, kind: Kind },
}

/// The files of one source, read into memory: path relative to the source's root → text (or why
/// it could not be read).
struct Tree {
    /// How paths of this source are shown (`ingredients` for the shipped ones, else the folder).
    label: String,
    origin: Origin,
    files: BTreeMap<PathBuf, Result<String, String>>,
}

impl Tree {
    fn shipped() -> Self {
        fn collect(dir: &Dir<'_>, files: &mut BTreeMap<PathBuf, Result<String, String>>) {
            for file in dir.files() {
                let text = std::str::from_utf8(file.contents())
                    .map(str::to_string)
                    .map_err(|_| "not UTF-8 text".to_string());
                files.insert(file.path().to_path_buf(), text);
            }
            for sub in dir.dirs() {
                collect(sub, files);
            }
        }
        let mut files = BTreeMap::new();
        collect(&SHIPPED, &mut files);
        Self {
            label: "ingredients".into(),
            origin: Origin::Shipped,
            files,
        }
    }

    fn folder(root: &Path) -> Result<Self, String> {
        fn walk(
            root: &Path,
            dir: &Path,
            files: &mut BTreeMap<PathBuf, Result<String, String>>,
            depth: usize,
        ) -> Result<(), String> {
            if depth > 8 {
                return Ok(());
            }
            let entries = std::fs::read_dir(dir)
                .map_err(|e| format!("{}: cannot read the folder: {e}", dir.display()))?;
            for entry in entries.flatten() {
                let path = entry.path();
                let hidden = entry.file_name().to_string_lossy().starts_with('.');
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if hidden {
                    continue;
                }
                let relative = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
                if kind.is_dir() {
                    walk(root, &path, files, depth + 1)?;
                } else if kind.is_file() {
                    let text = match entry.metadata() {
                        Ok(m) if m.len() > MAX_FILE_BYTES => Err(format!(
                            "{} bytes exceeds the limit of {MAX_FILE_BYTES}",
                            m.len()
                        )),
                        _ => std::fs::read(&path)
                            .map_err(|e| format!("cannot read: {e}"))
                            .and_then(|b| {
                                String::from_utf8(b).map_err(|_| "not UTF-8 text".into())
                            }),
                    };
                    files.insert(relative, text);
                }
            }
            Ok(())
        }
        if !root.is_dir() {
            return Err(format!("{}: no such folder", root.display()));
        }
        let mut files = BTreeMap::new();
        walk(root, root, &mut files, 0)?;
        Ok(Self {
            label: root.display().to_string(),
            origin: Origin::User {
                folder: root.display().to_string(),
            },
            files,
        })
    }

    fn show(&self, relative: &Path) -> String {
        Path::new(&self.label).join(relative).display().to_string()
    }
}

fn in_template_folder(path: &Path) -> bool {
    path.parent().is_some_and(|p| {
        p.components().any(|c| {
            let name = c.as_os_str().to_string_lossy();
            name == "template" || name == "templates"
        })
    })
}

/// The loaded ingredients, and the errors of the files that did not load.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Library {
    ingredients: BTreeMap<String, Ingredient>,
    errors: Vec<IngredientError>,
    folders: Vec<String>,
}

impl Library {
    /// The shipped ingredients only.
    pub fn shipped() -> Self {
        Self::load(&[])
    }

    /// The shipped ingredients, then each user folder in order.
    pub fn load(folders: &[PathBuf]) -> Self {
        let mut library = Self::default();
        library.add_tree(Tree::shipped());
        for folder in folders {
            library.folders.push(folder.display().to_string());
            match Tree::folder(folder) {
                Ok(tree) => library.add_tree(tree),
                Err(message) => library.errors.push(IngredientError::file(
                    &folder.display().to_string(),
                    message,
                )),
            }
        }
        library.check_references();
        for error in &library.errors {
            warn!(%error, "ingredient not loaded");
        }
        library
    }

    fn add_tree(&mut self, tree: Tree) {
        let mut seen_here: BTreeMap<String, String> = BTreeMap::new();
        for (relative, text) in &tree.files {
            if relative.extension().is_none_or(|e| e != "toml") || in_template_folder(relative) {
                continue;
            }
            let file = tree.show(relative);
            let text = match text {
                Ok(text) => text,
                Err(message) => {
                    self.errors
                        .push(IngredientError::file(&file, message.clone()));
                    continue;
                }
            };
            match load_one(&tree, relative, text, &file) {
                Ok(mut ingredient) => {
                    if let Some(first) = seen_here.get(&ingredient.name) {
                        self.errors.push(IngredientError::field(
                            &file,
                            "name",
                            format!("{:?} is already the name of {first}", ingredient.name),
                        ));
                        continue;
                    }
                    seen_here.insert(ingredient.name.clone(), file.clone());
                    if let Some(previous) = self.ingredients.get(&ingredient.name) {
                        ingredient.overrides = Some(previous.file.clone());
                    }
                    self.ingredients.insert(ingredient.name.clone(), ingredient);
                }
                Err(error) => self.errors.push(error),
            }
        }
    }

    /// Recipes whose `uses` name a missing ingredient (or a recipe) are dropped with an error.
    fn check_references(&mut self) {
        let mut broken = Vec::new();
        for ingredient in self.ingredients.values() {
            for (i, used) in ingredient.body.references().into_iter().enumerate() {
                let problem = match self.ingredients.get(used) {
                    None => Some(format!("no ingredient named {used:?}")),
                    Some(other) if other.kind == Kind::Recipe => Some(format!(
                        "{used:?} is a recipe; a recipe uses model, data-flow, api, security and testing ingredients"
                    )),
                    Some(_) => None,
                };
                if let Some(message) = problem {
                    broken.push((
                        ingredient.name.clone(),
                        IngredientError::field(&ingredient.file, format!("uses[{i}]"), message),
                    ));
                }
            }
        }
        for (name, error) in broken {
            self.ingredients.remove(&name);
            self.errors.push(error);
        }
    }

    /// Every loaded ingredient (optionally of one kind), by name.
    pub fn list(&self, kind: Option<Kind>) -> impl Iterator<Item = &Ingredient> {
        self.ingredients
            .values()
            .filter(move |i| kind.is_none_or(|k| i.kind == k))
    }

    pub fn get(&self, name: &str) -> Option<&Ingredient> {
        self.ingredients.get(name)
    }

    /// The ingredient `name`, or an error that names close matches.
    pub fn find(&self, name: &str) -> Result<&Ingredient, LoadError> {
        self.get(name).ok_or_else(|| {
            let close: Vec<&str> = self
                .ingredients
                .keys()
                .filter(|k| k.contains(name) || name.contains(k.as_str()))
                .map(String::as_str)
                .take(5)
                .collect();
            let failed = self.errors.iter().any(|e| e.path().contains(name));
            let hint = if !close.is_empty() {
                format!(" (did you mean {}?)", close.join(", "))
            } else if failed {
                " (a file of that name failed to load; see `klf ingredients ls`)".into()
            } else {
                String::new()
            };
            LoadError::NotFound {
                name: name.to_string(),
                hint,
            }
        })
    }

    /// The recipe `name`.
    pub fn recipe(&self, name: &str) -> Result<(&Ingredient, &kinds::Recipe), LoadError> {
        let ingredient = self.find(name)?;
        match &ingredient.body {
            Body::Recipe(recipe) => Ok((ingredient, recipe)),
            _ => Err(LoadError::NotARecipe {
                name: name.to_string(),
                kind: ingredient.kind,
            }),
        }
    }

    /// The files that failed to load, with the field at fault.
    pub fn errors(&self) -> &[IngredientError] {
        &self.errors
    }

    /// The user folders, in load order.
    pub fn folders(&self) -> &[String] {
        &self.folders
    }

    pub fn len(&self) -> usize {
        self.ingredients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ingredients.is_empty()
    }
}

fn load_one(
    tree: &Tree,
    relative: &Path,
    text: &str,
    file: &str,
) -> Result<Ingredient, IngredientError> {
    let (kind, mut body) = kinds::parse(text, file)?;
    if let Body::Recipe(recipe) = &mut body {
        let folder = relative
            .parent()
            .unwrap_or(Path::new(""))
            .join(&recipe.template);
        for (path, content) in &tree.files {
            if let Ok(inside) = path.strip_prefix(&folder) {
                let name = inside.to_string_lossy().replace('\\', "/");
                let content = content
                    .as_ref()
                    .map_err(|m| IngredientError::file(&tree.show(path), m.clone()))?;
                recipe.templates.insert(name, content.clone());
            }
        }
        for required in ["klf.toml.jinja", "main.js.jinja"] {
            if !recipe.templates.contains_key(required) {
                return Err(IngredientError::field(
                    file,
                    "template",
                    format!(
                        "the template folder {} has no {required}",
                        tree.show(&folder)
                    ),
                ));
            }
        }
        super::render::check_templates(recipe).map_err(|(template, message)| {
            IngredientError::file(&tree.show(&folder.join(template)), message)
        })?;
    }
    let (name, description) = match &body {
        Body::Model(m) => (m.name.clone(), m.description.clone()),
        Body::DataFlow(d) => (d.name.clone(), d.description.clone()),
        Body::Api(a) => (a.name.clone(), a.description.clone()),
        Body::Security(s) => (s.name.clone(), s.description.clone()),
        Body::Testing(t) => (t.name.clone(), t.description.clone()),
        Body::Recipe(r) => (r.name.clone(), r.description.clone()),
    };
    Ok(Ingredient {
        name,
        kind,
        description,
        file: file.to_string(),
        origin: tree.origin.clone(),
        overrides: None,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_ingredients_load_without_errors_and_every_recipe_renders_or_names_what_it_needs()
    {
        let library = Library::shipped();
        assert!(library.errors().is_empty(), "{:#?}", library.errors());
        assert!(library.list(Some(Kind::Recipe)).count() >= 12);
        for recipe in library.list(Some(Kind::Recipe)) {
            let request = crate::ingredients::RenderRequest {
                recipe: recipe.name.clone(),
                ..Default::default()
            };
            match crate::ingredients::render::render(&library, &request) {
                Ok(rendered) => {
                    rendered.package().expect("a package");
                }
                Err(crate::ingredients::RenderError::MissingParameter { .. }) => {}
                Err(other) => panic!("{}: {other}", recipe.name),
            }
        }
    }
}
