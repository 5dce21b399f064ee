//! The catalog of actions this gateway sells, from the config. Resolves an action name
//! to a small dense id without allocating, so per-action tables (metrics, later rate
//! limits and counters) are plain arrays. Unknown names are refused, never forwarded.

use crate::config::ActionConfig;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ActionId(pub u16);

#[derive(Debug)]
pub struct Catalog {
    names: Vec<Box<str>>,
    /// aHash, not SipHash: every key comes from the config and the map never changes
    /// after it is built, so a request's name can only be looked up, never inserted,
    /// and no collisions can be forced into it; a lookup per call hashed with SipHash
    /// cost about 200 instructions.
    ids: HashMap<Box<str>, ActionId, ahash::RandomState>,
}

impl Catalog {
    pub fn new(actions: &[ActionConfig]) -> Self {
        let names: Vec<Box<str>> = actions.iter().map(|a| a.name.as_str().into()).collect();
        let ids = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), ActionId(i as u16)))
            .collect();
        Self { names, ids }
    }

    pub fn lookup(&self, name: &str) -> Option<ActionId> {
        self.ids.get(name).copied()
    }

    pub fn name(&self, id: ActionId) -> &str {
        &self.names[id.0 as usize]
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|n| &**n)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn actions(names: &[&str]) -> Vec<ActionConfig> {
        names
            .iter()
            .map(|n| ActionConfig {
                name: n.to_string(),
                rate_limit_qps: None,
                billable: true,
            })
            .collect()
    }

    #[test]
    fn resolves_known_names_only() {
        let c = Catalog::new(&actions(&["DetectAuth", "LivenessCompare"]));
        assert_eq!(c.lookup("LivenessCompare"), Some(ActionId(1)));
        assert_eq!(c.name(ActionId(0)), "DetectAuth");
        assert_eq!(c.lookup("livenesscompare"), None);
        assert_eq!(c.lookup(""), None);
    }
}
