//! The prices ROI is computed with: the `[roi]` table of `<data>/roi.toml`, every field optional.
//!
//! ```toml
//! [roi]
//! hourly_rate_usd = 100.0            # a developer hour (development time, time saved, maintenance)
//! cpu_second_usd = 0.000012          # one second of execution inside an instance
//! gb_month_usd = 0.10                # storing one GB for a month (artifacts)
//! memory_gb_month_usd = 3.50         # holding one GB of memory for a month (instances while they run)
//! maintenance_event_hours = 0.5      # developer hours one repair, rollback or redeploy costs
//! model_input_usd_per_1k = 0.00015   # model price per 1000 prompt tokens
//! model_output_usd_per_1k = 0.0006   # model price per 1000 completion tokens
//!
//! [roi.http_request_usd]             # USD per answered ctx.http request, by host
//! "api.example.com" = 0.002
//! ```
//!
//! A missing file (or a missing field) means the default, which [`Rates::describe_source`]
//! reports; a value that is not a finite non-negative number, or an unknown key, is an error that
//! names the file and the field.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The file name of the rates inside a node's data dir.
pub const ROI_CONFIG_FILE: &str = "roi.toml";

/// Why `roi.toml` was refused. Errors of the file system and the TOML parser are the source.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RatesError {
    #[error("{path}: cannot be read: {source}")]
    File {
        path: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("{path}: cannot be read as TOML: {}", .source.message())]
    Syntax {
        path: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("{path}: field `{field}`: {message}")]
    Field {
        path: String,
        field: String,
        message: String,
    },
}

/// Where a rate's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateSource {
    /// The documented default (no file, or the field was absent).
    Default,
    /// Set in `roi.toml`.
    Config,
}

/// One configured price.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    pub value: f64,
    pub source: RateSource,
}

impl Rate {
    const fn default_of(value: f64) -> Self {
        Self {
            value,
            source: RateSource::Default,
        }
    }
}

/// Model prices, per 1000 tokens (USD).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ModelPrice {
    pub input_usd_per_1k: f64,
    pub output_usd_per_1k: f64,
}

impl ModelPrice {
    /// The cost of one exchange: tokens × price per 1000. The token counts are what the provider
    /// reported, so the amount is measured.
    pub fn cost(&self, tokens_in: u64, tokens_out: u64) -> super::Amount {
        let value = tokens_in as f64 / 1000.0 * self.input_usd_per_1k
            + tokens_out as f64 / 1000.0 * self.output_usd_per_1k;
        super::Amount::measured(
            value,
            format!(
                "{tokens_in} prompt + {tokens_out} completion tokens (reported by the provider) × \
                 ${}/${} per 1k",
                self.input_usd_per_1k, self.output_usd_per_1k
            ),
        )
    }
}

/// Every price ROI uses, with where each came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    /// USD per developer hour.
    pub hourly_rate_usd: Rate,
    /// USD per second of execution inside an instance.
    pub cpu_second_usd: Rate,
    /// USD per GB stored for a month (artifacts).
    pub gb_month_usd: Rate,
    /// USD per GB of memory held for a month.
    pub memory_gb_month_usd: Rate,
    /// Developer hours one maintenance event (repair, rollback, redeploy) costs.
    pub maintenance_event_hours: Rate,
    /// USD per 1000 prompt tokens.
    pub model_input_usd_per_1k: Rate,
    /// USD per 1000 completion tokens.
    pub model_output_usd_per_1k: Rate,
    /// USD per answered `ctx.http` request, by host (`[roi.http_request_usd]`); hosts not listed
    /// cost nothing.
    #[serde(default)]
    pub http_request_usd: std::collections::BTreeMap<String, f64>,
    /// The file the rates were read from (absent when it does not exist).
    pub file: Option<PathBuf>,
}

impl Default for Rates {
    /// The documented defaults: a $100 developer hour, on-demand cloud prices for a vCPU
    /// ($0.043 an hour), memory ($3.50 a GB-month) and block storage ($0.10 a GB-month), half
    /// an hour per maintenance event, and gpt-4o-mini's token prices.
    fn default() -> Self {
        Self {
            hourly_rate_usd: Rate::default_of(100.0),
            cpu_second_usd: Rate::default_of(0.000012),
            gb_month_usd: Rate::default_of(0.10),
            memory_gb_month_usd: Rate::default_of(3.50),
            maintenance_event_hours: Rate::default_of(0.5),
            model_input_usd_per_1k: Rate::default_of(0.00015),
            model_output_usd_per_1k: Rate::default_of(0.0006),
            http_request_usd: std::collections::BTreeMap::new(),
            file: None,
        }
    }
}

const FIELDS: &[&str] = &[
    "hourly_rate_usd",
    "cpu_second_usd",
    "gb_month_usd",
    "memory_gb_month_usd",
    "maintenance_event_hours",
    "model_input_usd_per_1k",
    "model_output_usd_per_1k",
    "http_request_usd",
];

impl Rates {
    /// Reads `<data_dir>/roi.toml`; defaults when the file does not exist.
    pub fn load(data_dir: &Path) -> Result<Self, RatesError> {
        let path = data_dir.join(ROI_CONFIG_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(RatesError::File {
                path: path.display().to_string(),
                source: Arc::new(e),
            }),
        }
    }

    /// Parses the text of a rates file; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, RatesError> {
        let shown = path.display().to_string();
        let field_error = |field: &str, message: String| RatesError::Field {
            path: shown.clone(),
            field: field.to_string(),
            message,
        };
        let doc: toml::Table = toml::from_str(text).map_err(|source| RatesError::Syntax {
            path: shown.clone(),
            source,
        })?;
        let mut rates = Self {
            file: Some(path.to_path_buf()),
            ..Self::default()
        };
        for (key, value) in &doc {
            if key != "roi" {
                return Err(field_error(key, "unknown table (known: [roi])".into()));
            }
            let toml::Value::Table(table) = value else {
                return Err(field_error(
                    "roi",
                    format!("expected a table, found {}", value.type_str()),
                ));
            };
            for (field, value) in table {
                let name = format!("roi.{field}");
                if field == "http_request_usd" {
                    let toml::Value::Table(hosts) = value else {
                        return Err(field_error(
                            &name,
                            format!(
                                "expected a table of \"host\" = USD per request, found {}",
                                value.type_str()
                            ),
                        ));
                    };
                    for (host, price) in hosts {
                        let name = format!("{name}.{host}");
                        let number = price
                            .as_float()
                            .or_else(|| price.as_integer().map(|i| i as f64))
                            .filter(|n| n.is_finite() && *n >= 0.0)
                            .ok_or_else(|| {
                                field_error(&name, "expected a finite, non-negative number".into())
                            })?;
                        rates
                            .http_request_usd
                            .insert(host.to_ascii_lowercase(), number);
                    }
                    continue;
                }
                let slot = match field.as_str() {
                    "hourly_rate_usd" => &mut rates.hourly_rate_usd,
                    "cpu_second_usd" => &mut rates.cpu_second_usd,
                    "gb_month_usd" => &mut rates.gb_month_usd,
                    "memory_gb_month_usd" => &mut rates.memory_gb_month_usd,
                    "maintenance_event_hours" => &mut rates.maintenance_event_hours,
                    "model_input_usd_per_1k" => &mut rates.model_input_usd_per_1k,
                    "model_output_usd_per_1k" => &mut rates.model_output_usd_per_1k,
                    _ => {
                        return Err(field_error(
                            &name,
                            format!("unknown key (known: {})", FIELDS.join(", ")),
                        ));
                    }
                };
                let number = value
                    .as_float()
                    .or_else(|| value.as_integer().map(|i| i as f64))
                    .ok_or_else(|| {
                        field_error(
                            &name,
                            format!("expected a number, found {}", value.type_str()),
                        )
                    })?;
                if !number.is_finite() || number < 0.0 {
                    return Err(field_error(
                        &name,
                        format!("{number} is not a finite, non-negative number"),
                    ));
                }
                *slot = Rate {
                    value: number,
                    source: RateSource::Config,
                };
            }
        }
        Ok(rates)
    }

    /// The model prices as one value, for costing a run's tokens.
    pub fn model_price(&self) -> ModelPrice {
        ModelPrice {
            input_usd_per_1k: self.model_input_usd_per_1k.value,
            output_usd_per_1k: self.model_output_usd_per_1k.value,
        }
    }

    /// Where the rates came from, for notes: `roi.toml` or `defaults`.
    pub fn describe_source(&self) -> String {
        match &self.file {
            Some(path) => format!("rates from {}", path.display()),
            None => format!("default rates (no {ROI_CONFIG_FILE})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Rates, RatesError> {
        Rates::parse(text, Path::new("/data/roi.toml"))
    }

    #[test]
    fn http_prices_are_per_host() {
        let rates = parse("[roi.http_request_usd]\n\"API.example.com\" = 0.002\n\"b.io\" = 1\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rates.http_request_usd.get("api.example.com"), Some(&0.002));
        assert_eq!(rates.http_request_usd.get("b.io"), Some(&1.0));
        let error = parse("[roi.http_request_usd]\n\"a.io\" = -1\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("roi.http_request_usd.a.io"), "{error}");
        let error = parse("[roi]\nhttp_request_usd = 3\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("expected a table"), "{error}");
    }

    #[test]
    fn an_absent_file_gives_the_documented_defaults() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let rates = Rates::load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rates, Rates::default());
        assert_eq!(rates.hourly_rate_usd.value, 100.0);
        assert_eq!(rates.hourly_rate_usd.source, RateSource::Default);
    }

    #[test]
    fn set_fields_override_and_are_marked_as_configured() {
        let rates = parse("[roi]\nhourly_rate_usd = 80\ncpu_second_usd = 0.0001\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            rates.hourly_rate_usd,
            Rate {
                value: 80.0,
                source: RateSource::Config
            }
        );
        assert_eq!(rates.cpu_second_usd.value, 0.0001);
        assert_eq!(rates.gb_month_usd, Rates::default().gb_month_usd);
        assert_eq!(rates.file.as_deref(), Some(Path::new("/data/roi.toml")));
        // An empty file is all defaults.
        assert_eq!(
            parse("").unwrap_or_else(|e| panic!("{e}")).hourly_rate_usd,
            Rates::default().hourly_rate_usd
        );
    }

    #[test]
    fn bad_values_name_the_file_and_the_field() {
        let cases = [
            (
                "[roi]\nhourly_rate_usd = \"lots\"",
                "field `roi.hourly_rate_usd`: expected a number, found string",
            ),
            (
                "[roi]\ncpu_second_usd = -1",
                "field `roi.cpu_second_usd`: -1 is not a finite, non-negative number",
            ),
            (
                "[roi]\ngb_month_usd = nan",
                "field `roi.gb_month_usd`: NaN is not a finite",
            ),
            (
                "[roi]\nhourly_rate = 1",
                "field `roi.hourly_rate`: unknown key (known: hourly_rate_usd,",
            ),
            ("[rates]\nx = 1", "field `rates`: unknown table"),
            ("roi = 3", "field `roi`: expected a table, found integer"),
            ("[roi\n", "/data/roi.toml: cannot be read as TOML"),
        ];
        for (text, expected) in cases {
            let message = match parse(text) {
                Ok(_) => panic!("{text:?} should be refused"),
                Err(e) => e.to_string(),
            };
            assert!(message.starts_with("/data/roi.toml: "), "{message}");
            assert!(message.contains(expected), "{text:?}: {message}");
        }
    }

    #[test]
    fn model_cost_is_tokens_times_price_per_thousand() {
        let price = ModelPrice {
            input_usd_per_1k: 0.5,
            output_usd_per_1k: 1.5,
        };
        let amount = price.cost(2000, 500);
        assert!((amount.value - (1.0 + 0.75)).abs() < 1e-12);
        assert_eq!(amount.basis, super::super::Basis::Measured);
        assert!(amount.note.contains("2000 prompt + 500 completion tokens"));
    }
}
