//! One batch's path through a task (effectively-once and at-least-once):
//! decide every key's share, record the decision in the changelog, publish
//! the outbox, settle (wait for the acknowledgements, mark published) and
//! snapshot when due.

use super::*;

impl<W: Worker> Runtime<W> {
    /// Decides each task's share of a batch, one task after the other
    /// (offset order within each input partition), then records and
    /// publishes them together. Returns the group offsets that may be
    /// committed now: those of batches whose outputs are acknowledged.
    /// `Stopping` when shutdown interrupted a decision: the tasks decided
    /// before it are written, and the drain commits their offsets once their
    /// outputs are acknowledged.
    pub(super) async fn run_tasks(
        &self,
        by_task: BTreeMap<i32, Vec<&BorrowedMessage<'_>>>,
        stop: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<Vec<GroupOffset>> {
        let mut decided = Vec::with_capacity(by_task.len());
        let mut stopping = None;
        for (p, msgs) in by_task {
            match self.decide(p, &msgs, stop).await {
                Ok(d) => decided.extend(d),
                Err(e) if e.is::<Stopping>() => {
                    tracing::info!(partition = p, "shutdown during an outage: the batch is left to the next owner");
                    stopping = Some(e);
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        // The tasks' writes overlap: a batch waits for one changelog round
        // trip, not one per partition. Each task writes only its own
        // changelog partition, and a failed write stops the worker.
        let written = match self.cfg.serial_task_writes {
            false => futures::future::try_join_all(decided.into_iter().map(|d| self.write(d))).await?,
            true => {
                let mut written = Vec::with_capacity(decided.len());
                for d in decided {
                    written.push(self.write(d).await?);
                }
                written
            }
        };
        match stopping {
            Some(e) => Err(e),
            None => Ok(written.into_iter().flatten().collect()),
        }
    }

    /// Decodes, decides and encodes one task's share of a batch: everything
    /// but the writes (so a transaction need not stay open while the registry
    /// is retried). `None` when the partition is no longer assigned.
    pub(super) async fn decide(
        &self,
        p: i32,
        msgs: &[&BorrowedMessage<'_>],
        stop: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<Option<Decided<W::State>>> {
        let (cfg, metrics, name) = (&self.cfg, &self.metrics, self.worker.name());
        let started = Instant::now();
        let mut inputs = Vec::with_capacity(msgs.len());
        let mut decoded = Vec::with_capacity(msgs.len());
        let mut outbox = Vec::new();
        let mut checkpoint = BTreeMap::new();
        let mut offsets: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for m in msgs {
            checkpoint.insert(format!("{}/{}", m.topic(), m.partition()), m.offset() + 1);
            offsets.insert((m.topic(), m.partition()), m.offset() + 1);
            let size = m.payload().map_or(0, <[u8]>::len);
            if size > cfg.max_record_bytes {
                let why = format!("value of {size} bytes exceeds --max-record-bytes {}", cfg.max_record_bytes);
                tracing::warn!(topic = m.topic(), partition = p, offset = m.offset(), %why, "poison record to DLQ");
                outbox.push(dlq_record(name, &cfg.names, m, "oversized", &why));
                continue;
            }
            match retry_transient("decoding", metrics, stop, || decode(&self.codec, m, &cfg.names)).await? {
                Ok(i) => {
                    inputs.push(i);
                    decoded.push(*m);
                }
                Err(e) => {
                    tracing::warn!(topic = m.topic(), partition = p, offset = m.offset(), error = %e, "poison record to DLQ");
                    outbox.push(dlq_record(name, &cfg.names, m, e.class(), &e.to_string()));
                }
            }
        }
        // Poison never reaches the worker; it counts as a DLQ outcome all the same.
        metrics.processed.with_label_values(&[Outcome::DLQ]).inc_by(outbox.len() as u64);
        let (mut store, batch_no) = {
            let mut t = lock(&self.tasks);
            let Some(task) = t.get_mut(&p) else { return Ok(None) };
            task.next_batch += 1;
            (std::mem::take(&mut task.store), task.next_batch - 1)
        };
        let mut states = match tokio::task::block_in_place(|| store.checkout(inputs.iter().map(|i| i.key.as_str()))) {
            Ok(states) => states,
            Err(e) => {
                // The next start rebuilds this store from the changelog.
                store.forget_position();
                self.put_back(p, store);
                return Err(anyhow::Error::new(e).context(format!("reading the states of partition {p}'s batch")));
            }
        };
        let occurred: Vec<i64> = inputs.iter().map(|i| i.event.metadata().occurred_at).collect();
        let decoded_at = Instant::now();
        let result = process_batch(&*self.worker, &self.runner, &mut states, inputs, cfg.dedupe_retention_ms).await;
        let decided_at = Instant::now();
        let mut output_types = Vec::with_capacity(result.outputs.len());
        for o in &result.outputs {
            let topic = cfg.names.get(o.event.default_topic());
            let value =
                match retry_transient("encoding", metrics, stop, || self.codec.encode_any(&topic, &o.event)).await {
                    Ok(Ok(v)) => v,
                    Ok(Err(e)) => anyhow::bail!("encoding {} for {topic}: {e}", o.event.record_name()),
                    Err(stopping) => {
                        // The batch is abandoned: its states never reach the store.
                        self.put_back(p, store);
                        return Err(stopping);
                    }
                };
            let cause = headers::cause(&o.cause_topic, p, o.cause_offset);
            let mut hs = vec![(headers::CAUSE.to_string(), cause.into_bytes())];
            if let Some(t) = &o.traceparent {
                let child = headers::child_traceparent(t, &o.event.metadata().event_id);
                hs.push((headers::TRACEPARENT.to_string(), child.into_bytes()));
            }
            outbox.push(OutboxRecord { topic, key: o.event.key().to_string(), value, headers: hs });
            output_types.push(o.event.record_name());
        }
        let now = keyflow_schemas::process::now_ms();
        for ((at, outcome), took) in occurred.iter().zip(&result.outcomes).zip(&result.elapsed) {
            metrics.processed.with_label_values(&[outcome.label()]).inc();
            metrics.processing_seconds.observe(took.as_secs_f64());
            if matches!(outcome, Outcome::Ok { .. }) {
                metrics.e2e_latency.observe((now - at).max(0) as f64 / 1000.0);
            }
        }
        for (m, outcome) in decoded.iter().zip(&result.outcomes) {
            match outcome {
                Outcome::Rejected(why) => {
                    tracing::warn!(topic = m.topic(), partition = p, offset = m.offset(), %why, "contract violation to DLQ");
                    outbox.push(dlq_record(name, &cfg.names, m, "contract_violation", why));
                }
                Outcome::Ignored(why) => {
                    tracing::debug!(topic = m.topic(), partition = p, offset = m.offset(), why, "input ignored")
                }
                _ => {}
            }
        }
        let offsets: Vec<GroupOffset> = offsets.into_iter().map(|((t, q), o)| (t.to_string(), q, o)).collect();
        Ok(Some(Decided {
            p,
            batch: batch_no,
            inputs: msgs.len(),
            store,
            states,
            outbox,
            output_types,
            checkpoint,
            offsets,
            changed: result.changed,
            pending_delta: result.pending_delta,
            timings: [started, decoded_at, decided_at, Instant::now()],
        }))
    }

    /// Records and publishes a decided task batch (see [`Guarantee`]);
    /// returns the group offsets that may be committed now.
    pub(super) async fn write(&self, d: Decided<W::State>) -> anyhow::Result<Vec<GroupOffset>> {
        let (cfg, metrics) = (&self.cfg, &self.metrics);
        let Decided {
            p,
            batch: batch_no,
            inputs,
            mut store,
            states,
            outbox,
            output_types,
            checkpoint,
            offsets,
            changed,
            ..
        } = d;
        let [started, decoded_at, decided_at, encoded_at] = d.timings;
        let stamp = lock(&self.tasks).get(&p).map(Task::stamp).unwrap_or_default();
        let topic = self.state_topic.as_str();
        // 1. Record the decision, while the previous batch's outputs are still
        // being acknowledged; that batch is marked published once both are in.
        // (The at-least-once baseline only waits for the previous batch: the
        // changelog is the one difference.) Inside a transaction the outputs
        // commit with the record, so it carries no outbox and nothing waits.
        let (mut written, mut records) = (0, 0);
        let mut recorded_at_offsets = vec![];
        let mut staged = vec![];
        let previous = lock(&self.tasks).get_mut(&p).and_then(|t| t.unacked.take());
        let log_of = |outbox: &[OutboxRecord]| {
            let entries =
                changelog::batch_entries(batch_no, &checkpoint, outbox, &changed, cfg.changelog_record_bytes)?;
            decision_records(topic, p, &entries, stamp)
        };
        let mut committable = match cfg.guarantee {
            Guarantee::EffectivelyOnce => {
                let log = log_of(&outbox)?;
                written = log.iter().map(|o| o.value.len() as u64).sum();
                let (recorded, settled) = futures::join!(send_all(&self.producer, &log), self.settle(p, previous));
                recorded_at_offsets = recorded?;
                records = recorded_at_offsets.len() as u64;
                settled?
            }
            Guarantee::ExactlyOnce => {
                let log = log_of(&[])?;
                for o in &log {
                    written += o.value.len() as u64;
                    staged.push(enqueue(&self.producer, o).await?);
                }
                vec![]
            }
            Guarantee::AtLeastOnce => self.settle(p, previous).await?,
        };
        // The states go back to the store; they reach its disk once the
        // batch's records are acknowledged (here) or its transaction commits.
        store.checkin(states, changed.keys());
        let recorded_at = Instant::now();
        // 2. Publish it: hand the outputs to the producer and go on; the next
        // batch (or idleness, a snapshot, shutdown, a revoke) waits for their
        // acknowledgement — or the transaction's commit does.
        let mut deliveries = Vec::with_capacity(outbox.len());
        for o in &outbox {
            let delivery = enqueue(&self.producer, &Outgoing::outbox(o)).await?;
            // A transaction's commit waits for its records itself.
            if cfg.guarantee != Guarantee::ExactlyOnce {
                deliveries.push(delivery);
            }
        }
        let unacked = if cfg.guarantee == Guarantee::ExactlyOnce {
            committable.extend(offsets);
            None
        } else {
            Some(Unacked { batch: batch_no, deliveries, offsets })
        };
        tracing::debug!(
            partition = p,
            inputs,
            outputs = outbox.len(),
            decode = ?decoded_at - started,
            decide = ?decided_at - decoded_at,
            encode = ?encoded_at - decided_at,
            record = ?recorded_at - encoded_at,
            publish = ?recorded_at.elapsed(),
            "batch done"
        );
        let mut types = output_types.into_iter();
        for o in &outbox {
            let ty = if o.topic == self.dlq_topic { "dlq" } else { types.next().unwrap_or("unknown") };
            metrics.produced.with_label_values(&[o.topic.as_str(), ty]).inc();
        }
        metrics.checkpoints.inc();
        let (due, position) = {
            let mut t = lock(&self.tasks);
            let Some(task) = t.get_mut(&p) else { return Ok(committable) };
            task.checkpoint.extend(checkpoint);
            task.since_snapshot += written;
            task.ownership.written += records;
            task.pending += d.pending_delta;
            task.unacked = unacked;
            task.staged.extend(staged);
            let mut position = None;
            if let (Some(&first), Some(&last)) = (recorded_at_offsets.iter().min(), recorded_at_offsets.iter().max()) {
                task.ownership.saw(last);
                // A batch whose outputs are not acknowledged yet is read
                // again by a restore from the store (and re-published unless marked).
                let from = if outbox.is_empty() { last + 1 } else { first };
                position = Some(task.position(&self.site, p, last, from));
            }
            (task.since_snapshot >= cfg.snapshot_interval_bytes.max(task.snapshot_bytes), position)
        };
        if let Some(position) = position {
            let deferred = if store.persist_due(STORE_PERSIST_INTERVAL) {
                tokio::task::block_in_place(|| store.persist(position))
                    .with_context(|| format!("writing partition {p}'s states to the local store"))?;
                None
            } else {
                Some(position)
            };
            if let Some(t) = lock(&self.tasks).get_mut(&p) {
                t.deferred = deferred;
            }
        }
        if due && cfg.guarantee.records() {
            // A snapshot stands for published batches only.
            let last = lock(&self.tasks).get_mut(&p).and_then(|t| t.unacked.take());
            committable.extend(self.settle(p, last).await?);
            if let Some(marker) = self.snapshot(p, batch_no, &store).await? {
                if cfg.guarantee == Guarantee::EffectivelyOnce {
                    // Everything up to the marker is in the store: a restart
                    // reads nothing below it (the trim may delete it).
                    let position = lock(&self.tasks).get_mut(&p).map(|t| {
                        t.deferred = None;
                        t.position(&self.site, p, marker, marker + 1)
                    });
                    if let Some(position) = position {
                        tokio::task::block_in_place(|| store.persist(position))
                            .with_context(|| format!("writing partition {p}'s store position"))?;
                    }
                }
            }
        }
        self.put_back(p, store);
        Ok(committable)
    }

    /// Writes the local stores' changes whose persist was deferred (the
    /// worker is idle).
    pub(super) fn persist_deferred(&self) -> anyhow::Result<()> {
        for (p, task) in lock(&self.tasks).iter_mut() {
            if let Some(position) = task.deferred.take() {
                tokio::task::block_in_place(|| task.store.persist(position))
                    .with_context(|| format!("writing partition {p}'s states to the local store"))?;
            }
        }
        Ok(())
    }

    /// Exactly-once: once the transaction committed, each task's local
    /// store gets the batch's states, naming the last record it wrote.
    pub(super) async fn persist_committed(&self) -> anyhow::Result<()> {
        let staged: Vec<(i32, Vec<rdkafka::producer::DeliveryFuture>)> = lock(&self.tasks)
            .iter_mut()
            .filter(|(_, t)| !t.staged.is_empty())
            .map(|(p, t)| (*p, std::mem::take(&mut t.staged)))
            .collect();
        for (p, deliveries) in staged {
            let mut last = None;
            for d in futures::future::join_all(deliveries).await {
                last = last.max(Some(delivered(Some(d), format_args!("a changelog record of partition {p}"))?));
            }
            let Some(last) = last else { continue };
            let mut tasks = lock(&self.tasks);
            let Some(task) = tasks.get_mut(&p) else { continue };
            task.ownership.saw(last);
            let position = task.position(&self.site, p, last, last + 1);
            tokio::task::block_in_place(|| task.store.persist(position))
                .with_context(|| format!("writing partition {p}'s states to the local store"))?;
        }
        Ok(())
    }

    /// Waits until `unacked`'s outputs are acknowledged, then marks its batch
    /// published without waiting for that ack: a lost marker only makes a
    /// restore re-publish the outbox byte for byte (copies consumers drop).
    /// Returns the batch's group offsets, now committable.
    pub(super) async fn settle(&self, p: i32, unacked: Option<Unacked>) -> anyhow::Result<Vec<GroupOffset>> {
        let Some(u) = unacked else { return Ok(vec![]) };
        for d in futures::future::join_all(u.deliveries).await {
            delivered(Some(d), format_args!("an output of batch {} of partition {p}", u.batch))?;
        }
        if !self.cfg.guarantee.records() {
            return Ok(u.offsets);
        }
        let mut tasks = lock(&self.tasks);
        let stamp = tasks.get(&p).map(Task::stamp).unwrap_or_default();
        let written = queue_published(&self.producer, &self.state_topic, p, u.batch, stamp);
        if let (Some(t), Some((n, delivery))) = (tasks.get_mut(&p), written) {
            t.since_snapshot += n;
            t.ownership.wrote_later(delivery);
        }
        Ok(u.offsets)
    }

    /// Settles every task's unacknowledged batch except those of `busy`
    /// (partitions whose next batch is running); returns the committable offsets.
    pub(super) async fn settle_others(&self, busy: &BTreeSet<i32>) -> anyhow::Result<Vec<GroupOffset>> {
        let waiting: Vec<(i32, Unacked)> = lock(&self.tasks)
            .iter_mut()
            .filter(|(p, _)| !busy.contains(*p))
            .filter_map(|(p, t)| t.unacked.take().map(|u| (*p, u)))
            .collect();
        let mut out = vec![];
        for (p, u) in waiting {
            out.extend(self.settle(p, Some(u)).await?);
        }
        Ok(out)
    }
}
