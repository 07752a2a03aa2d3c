//! Okapi BM25 over a handful of short documents: how the offline interpreter ranks recipes
//! against a request without any network or model.
//!
//! Small on purpose: a few dozen recipes, each a title, description, keywords and synonyms. Words
//! are lower-cased, split on anything that is not a letter or digit, stripped of English stop
//! words and given a light suffix stemming, so "prices", "priced" and "price" meet.

use std::collections::{BTreeMap, HashMap};

/// BM25's term-frequency saturation.
const K1: f64 = 1.2;
/// BM25's length normalisation.
const B: f64 = 0.75;

const STOP_WORDS: &[&str] = &[
    "a",
    "an",
    "and",
    "are",
    "as",
    "at",
    "be",
    "by",
    "can",
    "could",
    "do",
    "for",
    "from",
    "give",
    "have",
    "i",
    "in",
    "into",
    "is",
    "it",
    "its",
    "let",
    "like",
    "make",
    "me",
    "my",
    "need",
    "of",
    "on",
    "or",
    "our",
    "please",
    "should",
    "so",
    "some",
    "than",
    "that",
    "the",
    "their",
    "them",
    "then",
    "there",
    "these",
    "this",
    "to",
    "up",
    "us",
    "want",
    "we",
    "what",
    "when",
    "which",
    "while",
    "who",
    "will",
    "with",
    "would",
    "you",
    "your",
    "function",
    "build",
    "create",
    "write",
    "something",
    "thing",
    "things",
    "get",
    "use",
    "using",
];

/// The words of `text` as BM25 sees them.
pub fn tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .filter(|w| !STOP_WORDS.contains(&w.as_str()))
        .map(|w| stem(&w))
        .collect()
}

/// A light English stemmer: enough to meet plurals and common verb forms ("prices", "priced"
/// and "price" all become "pric").
fn stem(word: &str) -> String {
    if word.len() <= 3 || word.chars().any(|c| c.is_ascii_digit()) {
        return word.to_string();
    }
    let long_root = |root: &str| root.len() >= 3;
    let mut stemmed = if let Some(root) = word.strip_suffix("ies").filter(|r| long_root(r)) {
        format!("{root}y")
    } else if let Some(root) = word.strip_suffix("sses") {
        format!("{root}ss")
    } else if let Some(root) = word.strip_suffix("ing").filter(|r| long_root(r)) {
        root.to_string()
    } else if let Some(root) = word.strip_suffix("ed").filter(|r| long_root(r)) {
        root.to_string()
    } else if let Some(root) = word
        .strip_suffix('s')
        .filter(|r| long_root(r) && !r.ends_with('s'))
    {
        root.to_string()
    } else {
        word.to_string()
    };
    if stemmed.len() > 4 && stemmed.ends_with('e') {
        stemmed.pop();
    }
    stemmed
}

/// An index over documents identified by `K`.
#[derive(Debug, Clone)]
pub struct Index<K> {
    docs: Vec<(K, HashMap<String, f64>, f64)>,
    document_frequency: HashMap<String, usize>,
    average_length: f64,
}

impl<K: Clone> Index<K> {
    /// Indexes `(key, [(text, weight)])`: each text's words count `weight` times (titles and
    /// keywords can weigh more than descriptions).
    pub fn new(documents: impl IntoIterator<Item = (K, Vec<(String, f64)>)>) -> Self {
        let mut docs = Vec::new();
        let mut document_frequency: HashMap<String, usize> = HashMap::new();
        for (key, fields) in documents {
            let mut frequencies: HashMap<String, f64> = HashMap::new();
            let mut length = 0.0;
            for (text, weight) in fields {
                for token in tokens(&text) {
                    *frequencies.entry(token).or_default() += weight;
                    length += weight;
                }
            }
            for token in frequencies.keys() {
                *document_frequency.entry(token.clone()).or_default() += 1;
            }
            docs.push((key, frequencies, length));
        }
        let average_length = if docs.is_empty() {
            1.0
        } else {
            docs.iter().map(|(_, _, l)| *l).sum::<f64>() / docs.len() as f64
        };
        Self {
            docs,
            document_frequency,
            average_length: average_length.max(1.0),
        }
    }

    fn idf(&self, token: &str) -> f64 {
        let n = self.docs.len() as f64;
        let df = self.document_frequency.get(token).copied().unwrap_or(0) as f64;
        ((n - df + 0.5) / (df + 0.5) + 1.0).ln()
    }

    /// Every document with a positive score for `query`, best first, with the query words that
    /// matched it.
    pub fn search(&self, query: &str) -> Vec<Hit<K>> {
        let mut terms: BTreeMap<String, usize> = BTreeMap::new();
        for token in tokens(query) {
            *terms.entry(token).or_default() += 1;
        }
        let mut hits: Vec<Hit<K>> = self
            .docs
            .iter()
            .filter_map(|(key, frequencies, length)| {
                let mut score = 0.0;
                let mut matched = Vec::new();
                for token in terms.keys() {
                    let Some(&tf) = frequencies.get(token) else {
                        continue;
                    };
                    let norm =
                        tf * (K1 + 1.0) / (tf + K1 * (1.0 - B + B * length / self.average_length));
                    score += self.idf(token) * norm;
                    matched.push(token.clone());
                }
                (score > 0.0).then(|| Hit {
                    key: key.clone(),
                    score,
                    matched,
                })
            })
            .collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score));
        hits
    }
}

/// One ranked document.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit<K> {
    pub key: K,
    pub score: f64,
    /// The (stemmed) query words found in the document.
    pub matched: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> Index<&'static str> {
        Index::new([
            (
                "market",
                vec![
                    (
                        "Analyze market data and find opportunities".to_string(),
                        3.0,
                    ),
                    ("stock prices trading signals".to_string(), 2.0),
                ],
            ),
            (
                "anomalies",
                vec![
                    ("Detect anomalies in metrics".to_string(), 3.0),
                    ("spikes outliers monitoring latency".to_string(), 2.0),
                ],
            ),
            (
                "csv",
                vec![("Convert CSV to JSON records".to_string(), 3.0)],
            ),
        ])
    }

    #[test]
    fn ranks_the_document_that_shares_the_rare_words() {
        let hits = index().search("Analyze market data and find opportunities");
        assert_eq!(hits[0].key, "market");
        let hits = index().search("spot outliers in my latency metrics");
        assert_eq!(hits[0].key, "anomalies");
        assert!(hits[0].matched.contains(&"outlier".to_string()));
        let hits = index().search("turn a csv file into json");
        assert_eq!(hits[0].key, "csv");
    }

    #[test]
    fn unrelated_requests_score_nothing() {
        assert!(index().search("write a poem about the sea").is_empty());
        assert!(index().search("").is_empty());
    }

    #[test]
    fn stemming_meets_plurals_and_verb_forms() {
        for word in ["prices", "priced", "price"] {
            assert_eq!(stem(word), "pric", "{word}");
        }
        assert_eq!(stem("anomalies"), stem("anomaly"));
        assert_eq!(stem("trading"), stem("trades"));
        assert_eq!(stem("classes"), "class");
        assert_eq!(stem("class"), "class");
        assert_eq!(tokens("The Stocks, priced!"), vec!["stock", "pric"]);
    }
}
