//! Ordered per key, concurrent across keys.
//!
//! Within one partition's batch, records with the same key are processed one
//! at a time in offset order; records with different keys run concurrently,
//! at most `max_in_flight` at once. With a slow dependency (a payment
//! gateway) this lets one partition do the work of hundreds, without ever
//! reordering one key's events.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::Semaphore;

/// Runs work items keyed, bounded and ordered per key.
#[derive(Debug, Clone)]
pub struct KeyedRunner {
    permits: Arc<Semaphore>,
}

impl KeyedRunner {
    /// A runner allowing `max_in_flight` (≥ 1) items at once.
    pub fn new(max_in_flight: usize) -> Self {
        Self { permits: Arc::new(Semaphore::new(max_in_flight.max(1))) }
    }

    /// Runs `f` on every item: equal keys strictly in input order, one at a
    /// time; different keys concurrently. Returns the results in input order.
    pub async fn run<T, K, R, F, Fut>(&self, items: Vec<T>, key: impl Fn(&T) -> K, f: F) -> Vec<R>
    where
        K: Eq + Hash,
        F: Fn(T) -> Fut,
        Fut: std::future::Future<Output = R>,
    {
        let n = items.len();
        let mut chains: HashMap<K, Vec<(usize, T)>> = HashMap::new();
        for (i, item) in items.into_iter().enumerate() {
            let k = key(&item);
            match chains.get_mut(&k) {
                Some(chain) => chain.push((i, item)),
                None => {
                    chains.insert(k, vec![(i, item)]);
                }
            }
        }
        let f = &f;
        let permits = &self.permits;
        let mut running: FuturesUnordered<_> = chains
            .into_values()
            .map(|chain| async move {
                let mut out = Vec::with_capacity(chain.len());
                for (i, item) in chain {
                    // The semaphore is never closed, so acquiring cannot fail.
                    let _permit = permits.acquire().await.expect("semaphore open");
                    out.push((i, f(item).await));
                }
                out
            })
            .collect();
        let mut results: Vec<Option<R>> = (0..n).map(|_| None).collect();
        while let Some(chain) = running.next().await {
            for (i, r) in chain {
                results[i] = Some(r);
            }
        }
        // Every index was filled by exactly one chain.
        results.into_iter().map(|r| r.expect("every item ran")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    #[derive(Default)]
    struct Probe {
        active: Mutex<HashMap<u32, u32>>,
        max_total: Mutex<u32>,
        total: Mutex<u32>,
        log: Mutex<Vec<(u32, u32)>>,
    }

    async fn work(probe: &Probe, key: u32, seq: u32) -> (u32, u32) {
        {
            let mut a = probe.active.lock().unwrap();
            let c = a.entry(key).or_default();
            assert_eq!(*c, 0, "key {key} ran twice at once");
            *c += 1;
            let mut t = probe.total.lock().unwrap();
            *t += 1;
            let mut m = probe.max_total.lock().unwrap();
            *m = (*m).max(*t);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        probe.log.lock().unwrap().push((key, seq));
        *probe.active.lock().unwrap().get_mut(&key).unwrap() -= 1;
        *probe.total.lock().unwrap() -= 1;
        (key, seq)
    }

    #[tokio::test(start_paused = true)]
    async fn one_key_runs_in_order_and_never_overlaps_while_keys_run_concurrently() {
        let probe = Probe::default();
        // 50 keys × 4 records, interleaved as they would be in a partition.
        let items: Vec<(u32, u32)> = (0..4).flat_map(|seq| (0..50).map(move |k| (k, seq))).collect();
        let runner = KeyedRunner::new(16);
        let start = tokio::time::Instant::now();
        let out = runner.run(items.clone(), |(k, _)| *k, |(k, s)| work(&probe, k, s)).await;
        assert_eq!(out, items, "results come back in input order");
        let log = probe.log.lock().unwrap();
        for k in 0..50 {
            let seqs: Vec<u32> = log.iter().filter(|(key, _)| *key == k).map(|(_, s)| *s).collect();
            assert_eq!(seqs, vec![0, 1, 2, 3], "key {k} in offset order");
        }
        assert_eq!(*probe.max_total.lock().unwrap(), 16, "bounded by max_in_flight and reaching it");
        // 200 items of 5 ms, 16 at a time, 4 deep per key: ~13 rounds, far from 200 sequential ones.
        assert!(start.elapsed() < Duration::from_millis(5 * 20), "{:?}", start.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_single_key_is_fully_sequential() {
        let probe = Probe::default();
        let items: Vec<(u32, u32)> = (0..10).map(|s| (7, s)).collect();
        let start = tokio::time::Instant::now();
        KeyedRunner::new(64).run(items, |(k, _)| *k, |(k, s)| work(&probe, k, s)).await;
        assert_eq!(*probe.max_total.lock().unwrap(), 1);
        assert!(start.elapsed() >= Duration::from_millis(50));
    }
}
