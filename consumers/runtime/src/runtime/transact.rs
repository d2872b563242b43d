//! Exactly-once: a batch's outputs, changelog records and input offsets in
//! one Kafka transaction; an abortable failure aborts it and rolls its tasks
//! back to the committed changelog; a fenced producer stops the worker.

use super::*;

impl<W: Worker> Runtime<W> {
    /// Exactly-once: decides every task's share of the batch first (registry
    /// retries happen outside any transaction), then writes them all and
    /// the input offsets in one transaction and commits it. Returns why the
    /// batch must be undone, if it must, and whether a transaction was begun
    /// (nothing of the batch is then committed); an error when the producer
    /// failed for good (fenced) or shutdown interrupted the decisions.
    pub(super) async fn transact(
        &self,
        consumer: &StreamConsumer<Ctx<W>>,
        by_task: BTreeMap<i32, Vec<&BorrowedMessage<'_>>>,
        stop: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<Option<(anyhow::Error, bool)>> {
        let mut decided = Vec::with_capacity(by_task.len());
        for (p, msgs) in by_task {
            match self.decide(p, &msgs, stop).await {
                Ok(d) => decided.extend(d),
                Err(e) if e.is::<Stopping>() => return Err(e),
                Err(e) => return Ok(Some((e, false))),
            }
        }
        self.producer.begin_transaction().map_err(|e| self.transaction_error(e, "beginning a transaction"))?;
        let mut offsets = vec![];
        for d in decided {
            match self.write(d).await {
                Ok(o) => offsets.extend(o),
                Err(e) => return Ok(Some((e, true))),
            }
        }
        let group = consumer.group_metadata().context("the consumer has no group metadata to commit with")?;
        let committed = tokio::task::block_in_place(|| {
            if !offsets.is_empty() {
                let tpl = offsets_list(&offsets);
                retry_retriable(|| self.producer.send_offsets_to_transaction(&tpl, &group, TXN_CALL_TIMEOUT))?;
            }
            retry_retriable(|| self.producer.commit_transaction(TXN_CALL_TIMEOUT))
        });
        match committed {
            Ok(()) => {
                self.metrics.transactions.with_label_values(&[metrics::TXN_COMMITTED]).inc();
                self.persist_committed().await?;
                let below: Vec<(i32, i64)> = lock(&self.tasks)
                    .iter_mut()
                    .filter_map(|(p, t)| t.trim_after_commit.take().map(|at| (*p, at)))
                    .collect();
                self.trim(&below).await;
                Ok(None)
            }
            Err(KafkaError::Transaction(e)) if e.txn_requires_abort() => {
                Ok(Some((anyhow::Error::new(KafkaError::Transaction(e)).context("committing a transaction"), true)))
            }
            Err(e) => Err(self.transaction_error(e, "committing a transaction")),
        }
    }

    /// A transactional call's failure that the worker cannot recover from,
    /// explained: a broker without transactions, a fenced producer, or an
    /// error that outlasted its retries.
    pub(super) fn transaction_error(&self, e: KafkaError, what: &str) -> anyhow::Error {
        let KafkaError::Transaction(t) = &e else { return anyhow::Error::new(e).context(what.to_string()) };
        if t.code() == RDKafkaErrorCode::UnsupportedFeature {
            return anyhow::anyhow!(
                "--guarantee exactly-once: the broker does not support Kafka transactions ({t}); \
                 use --guarantee effectively-once"
            );
        }
        if t.is_fatal() {
            return anyhow::Error::new(e).context(format!(
                "{what}: this producer was fenced (another instance took over transactional.id {} or this \
                 member's partitions); it stops, its successor continues from the committed state",
                self.transactional_id
            ));
        }
        anyhow::Error::new(e).context(what.to_string())
    }

    /// Undoes a failed batch: aborts its transaction (when one was begun) and
    /// rolls each of its tasks back to the last committed batch — state
    /// restored from the changelog (read_committed), inputs rewound to its
    /// checkpoint — so the batch is decided again from scratch. `expected`
    /// holds each task's next batch number before the failed one: a restore
    /// that does not yet see that far (the previous commit's markers not yet
    /// written) is read again.
    pub(super) fn abort_transaction(
        &self,
        consumer: &StreamConsumer<Ctx<W>>,
        expected: &BTreeMap<i32, u64>,
        why: &anyhow::Error,
        began: bool,
    ) -> anyhow::Result<()> {
        let parts: Vec<i32> = expected.keys().copied().collect();
        tracing::warn!(error = %format!("{why:#}"), partitions = ?parts, "transaction failed; aborting it and rolling its tasks back");
        tokio::task::block_in_place(|| {
            // A batch undone before its transaction began (a decision failed)
            // is rolled back all the same, but it is not an aborted transaction.
            if began {
                retry_retriable(|| self.producer.abort_transaction(TXN_CALL_TIMEOUT))
                    .map_err(|e| self.transaction_error(e, "aborting a failed transaction"))?;
                self.metrics.transactions.with_label_values(&[metrics::TXN_ABORTED]).inc();
            }
            for (&p, &next) in expected {
                if !lock(&self.tasks).contains_key(&p) {
                    continue;
                }
                let started = Instant::now();
                let task = loop {
                    // The store forgets what the transaction changed; a restore
                    // continues it from the last committed batch.
                    let (lineage, base, store) = match lock(&self.tasks).get_mut(&p) {
                        Some(t) => {
                            let mut store = std::mem::take(&mut t.store);
                            store.discard();
                            t.staged.clear();
                            (t.lineage, t.base, store)
                        }
                        None => break None,
                    };
                    let how = Restore::Rollback { lineage, base };
                    let (task, _) =
                        restore_with_retry(&*self.worker, &self.cfg, &self.site, p, &self.metrics, how, store)?;
                    if task.next_batch >= next {
                        break Some(task);
                    }
                    if started.elapsed() > RESTORE_PATIENCE {
                        anyhow::bail!(
                            "rolling back partition {p}: its changelog shows batch {} committed, not {}",
                            task.next_batch - 1,
                            next - 1
                        );
                    }
                    if let Some(t) = lock(&self.tasks).get_mut(&p) {
                        t.store = task.store;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                };
                let Some(task) = task else { continue };
                for (topic, offset) in resume_offsets(&self.cfg, p, &task) {
                    let offset = match offset {
                        Offset::Stored => committed_offset(consumer, &topic, p)?,
                        o => o,
                    };
                    consumer
                        .seek(&topic, p, offset, Duration::from_secs(10))
                        .with_context(|| format!("rewinding {topic}[{p}] to {offset:?} after an abort"))?;
                }
                lock(&self.tasks).insert(p, task);
            }
            tracing::info!(partitions = ?parts, "rolled back to the last committed batch");
            Ok(())
        })
    }
}

/// Transactions that may fail in a row (each aborted, its batch decided
/// again) before the worker gives up on the error.
pub(super) const MAX_ABORTS_IN_A_ROW: u32 = 5;

/// How long one transactional call (send offsets, commit, abort) may take.
pub(super) const TXN_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// `transaction.timeout.ms`: how long a transaction may stay open (a batch's
/// writes, a large snapshot included) and how long the broker keeps a
/// crashed instance's open transaction before aborting it: read_committed
/// readers of its partitions wait that long, unless a restart with the same
/// `--instance-id` aborts it at once.
pub(super) const TRANSACTION_TIMEOUT_MS: &str = "60000";

/// The producer's `transactional.id`: stable per static member, so that a
/// restarted instance fences its predecessor and aborts its open transaction
/// at once; unique per process otherwise (the group generation then fences
/// zombies, KIP-447).
pub(super) fn transactional_id(worker: &str, instance_id: Option<&str>) -> String {
    match instance_id {
        Some(id) => format!("keyflow-{worker}-{id}"),
        None => {
            let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            format!("keyflow-{worker}-{}-{:x}", std::process::id(), started.as_millis())
        }
    }
}

/// Retries a transactional call while librdkafka says its error is retriable
/// (a coordinator moving, a timeout), a few times with growing pauses.
pub(super) fn retry_retriable(mut op: impl FnMut() -> KafkaResult<()>) -> KafkaResult<()> {
    let mut attempt = 0;
    loop {
        match op() {
            Err(KafkaError::Transaction(e))
                if e.is_retriable() && e.code() != RDKafkaErrorCode::UnsupportedFeature && attempt < 5 =>
            {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "transactional call failed; retrying");
                std::thread::sleep(Duration::from_millis(200 * attempt));
            }
            r => return r,
        }
    }
}
