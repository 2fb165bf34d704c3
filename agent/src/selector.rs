//! Kubernetes equality-based label selectors: `app=web,tier!=db,env,!canary`.

use std::collections::HashMap;

/// Errors parsing a selector.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("label selector term {0:?} is not key, !key, key=value or key!=value")]
pub struct SelectorError(String);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    Absent(String),
}

/// A parsed selector; all terms must hold (comma = AND). Empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(Vec<Term>);

impl Selector {
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut terms = Vec::new();
        for raw in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let bad = || SelectorError(raw.to_string());
            let term = if let Some((k, v)) = raw.split_once("!=") {
                Term::Ne(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = raw.split_once("==").or_else(|| raw.split_once('=')) {
                Term::Eq(k.trim().into(), v.trim().into())
            } else if let Some(k) = raw.strip_prefix('!') {
                Term::Absent(k.trim().into())
            } else {
                Term::Exists(raw.into())
            };
            let key = match &term {
                Term::Eq(k, _) | Term::Ne(k, _) | Term::Exists(k) | Term::Absent(k) => k,
            };
            if key.is_empty() || key.contains([' ', '=', '!']) {
                return Err(bad());
            }
            terms.push(term);
        }
        Ok(Selector(terms))
    }

    pub fn matches(&self, labels: &HashMap<String, String>) -> bool {
        self.0.iter().all(|t| match t {
            Term::Eq(k, v) => labels.get(k) == Some(v),
            Term::Ne(k, v) => labels.get(k) != Some(v),
            Term::Exists(k) => labels.contains_key(k),
            Term::Absent(k) => !labels.contains_key(k),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_terms() {
        let labels: HashMap<String, String> = [
            ("app".into(), "web".into()),
            ("tier".into(), "front".into()),
        ]
        .into();
        assert!(Selector::parse("").expect("empty").matches(&labels));
        assert!(Selector::parse("app=web").expect("eq").matches(&labels));
        assert!(
            Selector::parse("app=web, tier!=db")
                .expect("and")
                .matches(&labels)
        );
        assert!(!Selector::parse("app=db").expect("eq").matches(&labels));
        assert!(
            Selector::parse("tier,!canary")
                .expect("exists")
                .matches(&labels)
        );
        assert!(!Selector::parse("!app").expect("absent").matches(&labels));
        assert!(Selector::parse("=x").is_err());
    }
}
