//! The property load generator: per property (key `property_id`), the life of
//! its contract (`ContractStatusChanged` on `contracts`) and publication
//! requests (`PublicationApprovalRequested` on `properties`), in a mix of the
//! scenarios the publication worker must handle.

use std::collections::HashSet;

use keyflow_schemas::defaults::{MODERATED_IMAGE_PATTERNS, MODERATED_TERMS};
use keyflow_schemas::events::*;
use rand::Rng;

use crate::gen::{ratio, Base, Generator, Planned};
use crate::schedule::Scheduler;

/// Source names in the metadata.
pub const CONTRACT_SOURCE: &str = "contract-producer";
pub const PROPERTY_SOURCE: &str = "property-producer";

/// The scenario mix; each a share of scenarios, the rest are clean listings.
#[derive(Debug, Clone, clap::Args)]
pub struct PropertyMix {
    /// Distinct properties (keys).
    #[arg(long, default_value_t = 10_000)]
    pub properties: u32,
    /// Share of requests whose description contains a moderated term.
    #[arg(long, default_value = "0.05", value_parser = ratio)]
    pub moderated_description_rate: f64,
    /// Share of requests with an image matching a moderated pattern.
    #[arg(long, default_value = "0.05", value_parser = ratio)]
    pub moderated_image_rate: f64,
    /// Share of requests sent before their contract is approved.
    #[arg(long, default_value = "0.15", value_parser = ratio)]
    pub request_before_approval_rate: f64,
    /// Share of contracts that end CANCELLED, CLOSED or EXPIRED while a request waits.
    #[arg(long, default_value = "0.10", value_parser = ratio)]
    pub terminal_contract_rate: f64,
    /// Share of properties that never get a contract (their request stays pending).
    #[arg(long, default_value = "0.03", value_parser = ratio)]
    pub no_contract_rate: f64,
    /// Share of contracts that get a stale update (older contract_last_modified_on arriving later).
    #[arg(long, default_value = "0.05", value_parser = ratio)]
    pub stale_update_rate: f64,
}

impl Default for PropertyMix {
    fn default() -> Self {
        Self {
            properties: 10_000,
            moderated_description_rate: 0.05,
            moderated_image_rate: 0.05,
            request_before_approval_rate: 0.15,
            terminal_contract_rate: 0.10,
            no_contract_rate: 0.03,
            stale_update_rate: 0.05,
        }
    }
}

impl PropertyMix {
    fn weights(&self) -> [(&'static str, f64); 6] {
        [
            ("moderated_description", self.moderated_description_rate),
            ("moderated_image", self.moderated_image_rate),
            ("request_before_approval", self.request_before_approval_rate),
            ("terminal_contract", self.terminal_contract_rate),
            ("no_contract", self.no_contract_rate),
            ("stale_update", self.stale_update_rate),
        ]
    }

    /// The shares must leave room for clean listings.
    pub fn validate(&self) -> Result<(), String> {
        let sum: f64 = self.weights().iter().map(|(_, w)| w).sum();
        if sum > 1.0 {
            return Err(format!("the property scenario rates add up to {sum:.3}, more than 1"));
        }
        if self.properties < 10 {
            return Err("--properties must be at least 10".into());
        }
        Ok(())
    }
}

const CITIES: &[(&str, &str)] =
    &[("NL", "Utrecht"), ("NL", "Amsterdam"), ("ES", "Valencia"), ("PT", "Lisbon"), ("IT", "Bologna")];
const STREETS: &[&str] = &["Canal street", "Market square", "Harbour lane", "Old town road", "Garden walk"];
const DESCRIPTIONS: &[&str] = &[
    "Bright two-bedroom apartment with a balcony facing the park.",
    "Renovated family house with a large garden, close to schools.",
    "Compact studio in the centre, walking distance to the station.",
    "Quiet top-floor flat with canal views and a roof terrace.",
];

/// One step of a scenario, waiting in the scheduler.
#[derive(Debug)]
enum Step {
    Contract { property: u32, status: ContractStatus, modified: i64, stale: bool },
    Request { property: u32, category: &'static str },
    Done { property: u32 },
}

/// Generates contract and property events.
pub struct PropertyGen {
    base: Base,
    mix: PropertyMix,
    steps: Scheduler<(Step, &'static str)>,
    busy: HashSet<u32>,
    contract_ids: Vec<Option<String>>,
    next_property: u32,
}

impl PropertyGen {
    pub fn new(mix: PropertyMix, seed: u64, start_ms: i64, step_ms: f64) -> Self {
        let n = mix.properties as usize;
        Self {
            base: Base::new(seed, start_ms, step_ms),
            mix,
            steps: Scheduler::default(),
            busy: HashSet::new(),
            contract_ids: vec![None; n],
            next_property: 0,
        }
    }

    /// `country/city/street/number` of property `n`.
    fn address(n: u32) -> PropertyAddress {
        let (country, city) = CITIES[n as usize % CITIES.len()];
        let street = STREETS[(n as usize / CITIES.len()) % STREETS.len()];
        PropertyAddress {
            country: country.into(),
            city: city.into(),
            street: street.into(),
            number: (n / (CITIES.len() * STREETS.len()) as u32 + 1).to_string(),
        }
    }

    fn property_id(n: u32) -> String {
        let a = Self::address(n);
        format!("{}/{}/{}/{}", a.country, a.city, a.street, a.number)
    }

    /// Properties `0..no_contract_slice` never get a contract.
    fn no_contract_slice(&self) -> u32 {
        ((self.mix.properties as f64 * self.mix.no_contract_rate).ceil() as u32).max(1)
    }

    /// A free property for a scenario (round robin, skipping busy ones).
    fn claim(&mut self, no_contract: bool) -> Option<u32> {
        let (lo, hi) =
            if no_contract { (0, self.no_contract_slice()) } else { (self.no_contract_slice(), self.mix.properties) };
        let span = hi - lo;
        for i in 0..span {
            let p = lo + (self.next_property + i) % span;
            if !self.busy.contains(&p) {
                self.next_property = (self.next_property + i + 1) % span;
                self.busy.insert(p);
                return Some(p);
            }
        }
        None
    }

    fn start_scenario(&mut self) {
        let category = self.base.category(&self.mix.weights(), "clean");
        let Some(p) = self.claim(category == "no_contract") else { return };
        let mut due = self.base.seq;
        let mut gap = |b: &mut Base| {
            due += b.rng.random_range(1..12);
            due
        };
        let t = |b: &Base, due: u64| b.now_ms() + (due - b.seq) as i64;
        let push = |s: &mut Scheduler<(Step, &'static str)>, due: u64, step: Step| s.at(due, (step, category));
        if category == "no_contract" {
            let d = gap(&mut self.base);
            push(&mut self.steps, d, Step::Request { property: p, category });
            push(&mut self.steps, d, Step::Done { property: p });
            return;
        }
        let d0 = gap(&mut self.base);
        push(
            &mut self.steps,
            d0,
            Step::Contract { property: p, status: ContractStatus::Draft, modified: t(&self.base, d0), stale: false },
        );
        let early = matches!(category, "request_before_approval" | "terminal_contract");
        if early {
            let d = gap(&mut self.base);
            push(&mut self.steps, d, Step::Request { property: p, category });
        }
        let d1 = gap(&mut self.base);
        let end = if category == "terminal_contract" {
            *self.base.pick(&[ContractStatus::Cancelled, ContractStatus::Closed, ContractStatus::Expired])
        } else {
            ContractStatus::Approved
        };
        push(
            &mut self.steps,
            d1,
            Step::Contract { property: p, status: end, modified: t(&self.base, d1), stale: false },
        );
        if category == "stale_update" {
            let d = gap(&mut self.base);
            let modified = (t(&self.base, d0) + t(&self.base, d1)) / 2;
            push(
                &mut self.steps,
                d,
                Step::Contract { property: p, status: ContractStatus::Draft, modified, stale: true },
            );
        }
        if !early {
            let d = gap(&mut self.base);
            push(&mut self.steps, d, Step::Request { property: p, category });
        }
        let d = gap(&mut self.base);
        push(&mut self.steps, d, Step::Done { property: p });
    }

    fn contract(&mut self, property: u32, status: ContractStatus, modified: i64, fresh: bool) -> ContractStatusChanged {
        let property_id = Self::property_id(property);
        if fresh || self.contract_ids[property as usize].is_none() {
            self.contract_ids[property as usize] = Some(format!("contract-{}", &self.base.uuid()[..13]));
        }
        let contract_id = self.contract_ids[property as usize].clone().unwrap_or_default();
        ContractStatusChanged {
            metadata: self.base.meta("ContractStatusChanged", CONTRACT_SOURCE, &contract_id),
            property_id,
            contract_id,
            contract_status: status,
            contract_last_modified_on: modified,
        }
    }

    fn request(&mut self, property: u32, category: &str) -> PublicationApprovalRequested {
        let request_id = format!("req-{}", &self.base.uuid()[..18]);
        let mut description = self.base.pick(DESCRIPTIONS).to_string();
        if category == "moderated_description" {
            description = format!("{description} {}!", self.base.pick(MODERATED_TERMS));
        }
        let n = self.base.rng.random_range(1..5);
        let mut images: Vec<String> =
            (0..n).map(|i| format!("https://img.keyflow.example/{property}/{i}.jpg")).collect();
        if category == "moderated_image" {
            let pat = self.base.pick(MODERATED_IMAGE_PATTERNS).trim_matches('/');
            images.push(format!("https://img.keyflow.example/{property}/{pat}/x.jpg"));
        }
        PublicationApprovalRequested {
            metadata: self.base.meta("PublicationApprovalRequested", PROPERTY_SOURCE, &request_id),
            request_id,
            property_id: Self::property_id(property),
            address: Self::address(property),
            description,
            contract: *self.base.pick(&[ContractType::Sale, ContractType::Rent]),
            list_price_minor: self.base.rng.random_range(50_000..90_000_000),
            currency: "EUR".into(),
            images,
        }
    }
}

impl Generator for PropertyGen {
    fn next_event(&mut self) -> Planned {
        loop {
            // Keep a few scenarios in flight so properties interleave.
            while self.steps.len() < 8 {
                let before = self.steps.len();
                self.start_scenario();
                if self.steps.len() == before {
                    break; // every property is busy
                }
            }
            // The next due step, or the earliest one when none is due yet.
            let (step, category) = self
                .steps
                .pop_due(self.base.seq)
                .or_else(|| self.steps.pop_due(u64::MAX))
                .expect("a busy property always has a pending step");
            if let Some(p) = self.emit_step(step, category) {
                return p;
            }
        }
    }
}

impl PropertyGen {
    fn emit_step(&mut self, step: Step, category: &'static str) -> Option<Planned> {
        let planned = match step {
            Step::Done { property } => {
                self.busy.remove(&property);
                return None;
            }
            Step::Contract { property, status, modified, stale } => {
                let fresh = status == ContractStatus::Draft && !stale;
                let e = ContractEvent::from(self.contract(property, status, modified, fresh));
                let category = if stale { "stale_update" } else { category };
                Planned { event: e.into(), category, duplicate: false }
            }
            Step::Request { property, category } => {
                let e = PropertyEvent::from(self.request(property, category));
                Planned { event: e.into(), category, duplicate: false }
            }
        };
        self.base.seq += 1;
        Some(planned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn take(g: &mut PropertyGen, n: usize) -> Vec<Planned> {
        (0..n).map(|_| g.next_event()).collect()
    }

    #[test]
    fn same_seed_same_stream() {
        let a = take(&mut PropertyGen::new(PropertyMix::default(), 11, 0, 5.0), 3_000);
        let b = take(&mut PropertyGen::new(PropertyMix::default(), 11, 0, 5.0), 3_000);
        assert_eq!(a, b);
        assert_ne!(a, take(&mut PropertyGen::new(PropertyMix::default(), 12, 0, 5.0), 3_000));
    }

    #[test]
    fn scenario_mix_holds_on_a_large_sample() {
        let events = take(&mut PropertyGen::new(PropertyMix::default(), 2, 0, 1.0), 200_000);
        let mut by: HashMap<&str, usize> = HashMap::new();
        for p in events.iter().filter(|p| p.event.record_name() == "PublicationApprovalRequested") {
            *by.entry(p.category).or_default() += 1;
        }
        let total: usize = by.values().sum();
        let m = PropertyMix::default();
        for (name, want) in m.weights() {
            let got = by.get(name).copied().unwrap_or(0) as f64 / total as f64;
            assert!((got - want).abs() <= want * 0.12, "{name}: {got:.4} vs {want} ({by:?})");
        }
    }

    #[test]
    fn scenarios_put_each_property_through_its_story() {
        let events = take(&mut PropertyGen::new(PropertyMix::default(), 4, 0, 1.0), 100_000);
        let mut last_modified: HashMap<String, i64> = HashMap::new();
        let mut stale = 0;
        let mut no_contract_keys = HashSet::new();
        let mut contract_keys = HashSet::new();
        for p in &events {
            match &p.event {
                AnyEvent::Contract(ContractEvent::ContractStatusChanged(c)) => {
                    contract_keys.insert(c.property_id.clone());
                    let prev = last_modified.entry(c.property_id.clone()).or_insert(i64::MIN);
                    if c.contract_last_modified_on < *prev {
                        stale += 1;
                        assert_eq!(p.category, "stale_update");
                    } else {
                        *prev = c.contract_last_modified_on;
                    }
                }
                AnyEvent::Property(PropertyEvent::PublicationApprovalRequested(r)) => {
                    let a = &r.address;
                    assert_eq!(r.property_id, format!("{}/{}/{}/{}", a.country, a.city, a.street, a.number));
                    let moderated = MODERATED_TERMS.iter().any(|t| r.description.contains(t));
                    assert_eq!(moderated, p.category == "moderated_description");
                    if p.category == "no_contract" {
                        no_contract_keys.insert(r.property_id.clone());
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(stale > 100, "stale updates generated: {stale}");
        assert!(!no_contract_keys.is_empty());
        assert!(no_contract_keys.is_disjoint(&contract_keys), "no-contract properties never get one");
    }
}
