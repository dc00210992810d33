//! The planner's input: the fleet's services and, for each instance, where it runs and which
//! version of the plan's sidecar it runs.
//!
//! The planner only counts instances per cell, so the view does not keep instances one by
//! one: it counts them by (service, region, env, stage, running version), with the strings
//! interned. Four million instances of forty thousand services fold into a few hundred
//! thousand counters, and no instance string is copied.

use outrider_model::Service;

use crate::hash::FastMap;

/// One instance as the planner sees it, borrowed from the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceView<'a> {
    /// Its service.
    pub service: &'a str,
    /// Its `region` label.
    pub region: &'a str,
    /// Its `env` label (`preview` or `prod`).
    pub env: &'a str,
    /// Its `stage` label (`canary`, `single-dc`, `full`).
    pub stage: &'a str,
    /// The version of the plan's sidecar it runs now; `None` if it does not run that sidecar
    /// (such an instance is never in a plan's scope).
    pub version: Option<&'a str>,
}

/// An interned string (region, env, stage or version).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Sym(u32);

impl Sym {
    /// Position in the symbol table, for per-symbol lookup tables.
    pub(crate) fn index(self) -> usize {
        self.0 as usize
    }
}

/// What a counter counts: the instances of one service in one region, env and stage that
/// run one version (or none) of the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct GroupKey {
    /// Index into [`FleetView::services`].
    pub(crate) service: u32,
    pub(crate) region: Sym,
    pub(crate) env: Sym,
    pub(crate) stage: Sym,
    pub(crate) version: Option<Sym>,
}

/// The fleet as the planner sees it: the services, and the instances counted by (service,
/// region, env, stage, running version of the plan's sidecar).
///
/// A view is built for one sidecar: `version` of each pushed instance is the version of that
/// sidecar. Instances of services that are not in `services` are counted apart
/// ([`FleetView::unknown_service_instances`]) and never planned: a service the manager does not
/// know has no priority, traits or admission to go by.
#[derive(Debug, Clone, Default)]
pub struct FleetView {
    services: Vec<Service>,
    service_ids: FastMap<String, u32>,
    symbols: Vec<String>,
    symbol_ids: FastMap<String, Sym>,
    groups: FastMap<GroupKey, u64>,
    instances: u64,
    unknown: u64,
    /// The service of the last push: callers usually push a service's instances together.
    last_service: Option<u32>,
    /// The region, env, stage and version of the last push: often the same again.
    last_labels: [Option<Sym>; 4],
}

impl FleetView {
    /// A view of `services` with no instance yet. Service names are unique; should one repeat,
    /// the first one counts.
    pub fn new(services: Vec<Service>) -> Self {
        let mut service_ids = FastMap::default();
        service_ids.reserve(services.len());
        for (i, s) in services.iter().enumerate() {
            let id = u32::try_from(i).expect("fewer than 2^32 services");
            service_ids.entry(s.name.clone()).or_insert(id);
        }
        Self { services, service_ids, ..Self::default() }
    }

    /// A view of `services` and `instances`.
    pub fn from_instances<'a>(services: Vec<Service>, instances: impl IntoIterator<Item = InstanceView<'a>>) -> Self {
        let mut view = Self::new(services);
        for i in instances {
            view.push(i);
        }
        view
    }

    /// Counts one instance.
    pub fn push(&mut self, instance: InstanceView<'_>) {
        self.instances += 1;
        let service = match self.last_service {
            Some(id) if self.services[id as usize].name == instance.service => id,
            _ => match self.service_ids.get(instance.service) {
                Some(&id) => {
                    self.last_service = Some(id);
                    id
                }
                None => {
                    self.unknown += 1;
                    return;
                }
            },
        };
        let key = GroupKey {
            service,
            region: self.intern(0, instance.region),
            env: self.intern(1, instance.env),
            stage: self.intern(2, instance.stage),
            version: instance.version.map(|v| self.intern(3, v)),
        };
        *self.groups.entry(key).or_insert(0) += 1;
    }

    /// The symbol of `s`, label number `label` of [`FleetView::last_labels`].
    fn intern(&mut self, label: usize, s: &str) -> Sym {
        if let Some(last) = self.last_labels[label]
            && self.symbols[last.index()] == s
        {
            return last;
        }
        let sym = match self.symbol_ids.get(s) {
            Some(&sym) => sym,
            None => {
                let sym = Sym(u32::try_from(self.symbols.len()).expect("fewer than 2^32 distinct labels"));
                self.symbols.push(s.to_owned());
                self.symbol_ids.insert(s.to_owned(), sym);
                sym
            }
        };
        self.last_labels[label] = Some(sym);
        sym
    }

    /// The services.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// Instances pushed, including those of unknown services.
    pub fn instance_count(&self) -> u64 {
        self.instances
    }

    /// Instances pushed whose service is not in [`FleetView::services`] (never planned).
    pub fn unknown_service_instances(&self) -> u64 {
        self.unknown
    }

    /// The index of the service called `name`.
    pub(crate) fn service_id(&self, name: &str) -> Option<u32> {
        self.service_ids.get(name).copied()
    }

    /// The service at `id`.
    pub(crate) fn service(&self, id: u32) -> &Service {
        &self.services[id as usize]
    }

    /// The string `sym` stands for.
    pub(crate) fn symbol(&self, sym: Sym) -> &str {
        &self.symbols[sym.index()]
    }

    /// The symbol of `s`, if some instance carries it.
    pub(crate) fn lookup(&self, s: &str) -> Option<Sym> {
        self.symbol_ids.get(s).copied()
    }

    /// Every interned string with its symbol, in symbol order.
    pub(crate) fn symbols(&self) -> impl Iterator<Item = (Sym, &str)> {
        self.symbols.iter().enumerate().map(|(i, s)| (Sym(i as u32), s.as_str()))
    }

    /// Number of interned strings (the size of per-symbol lookup tables).
    pub(crate) fn symbol_count(&self) -> usize {
        self.symbols.len()
    }

    /// The counters.
    pub(crate) fn groups(&self) -> impl Iterator<Item = (&GroupKey, u64)> {
        self.groups.iter().map(|(k, &n)| (k, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str) -> Service {
        Service {
            name: name.into(),
            priority: outrider_model::Priority::P2,
            traits: Default::default(),
            protected: false,
            protected_periods: Vec::new(),
        }
    }

    fn inst<'a>(service: &'a str, region: &'a str, version: Option<&'a str>) -> InstanceView<'a> {
        InstanceView { service, region, env: "prod", stage: "full", version }
    }

    #[test]
    fn counts_by_group_and_sets_unknown_services_apart() {
        let view = FleetView::from_instances(
            vec![svc("a"), svc("b")],
            [
                inst("a", "boe", Some("1.0.0")),
                inst("a", "boe", Some("1.0.0")),
                inst("b", "boe", Some("1.0.0")),
                inst("a", "sg", None),
                inst("ghost", "sg", Some("1.0.0")),
                inst("a", "boe", Some("1.0.0")),
            ],
        );
        assert_eq!(view.instance_count(), 6);
        assert_eq!(view.unknown_service_instances(), 1);
        let mut groups: Vec<(String, String, Option<String>, u64)> = view
            .groups()
            .map(|(k, n)| {
                let name = view.service(k.service).name.clone();
                (name, view.symbol(k.region).to_owned(), k.version.map(|v| view.symbol(v).to_owned()), n)
            })
            .collect();
        groups.sort();
        assert_eq!(
            groups,
            [
                ("a".into(), "boe".into(), Some("1.0.0".into()), 3),
                ("a".into(), "sg".into(), None, 1),
                ("b".into(), "boe".into(), Some("1.0.0".into()), 1),
            ]
        );
        assert_eq!(view.lookup("sg").map(|s| view.symbol(s)), Some("sg"));
        assert_eq!(view.lookup("cn-north"), None);
        assert_eq!(view.service_id("b"), Some(1));
    }
}
