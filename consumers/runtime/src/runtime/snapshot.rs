//! Snapshots (every key's state as of a published batch, in parts), the
//! ownership check that makes a snapshot safe to point at, and the trim of
//! the changelog below it.

use super::*;

impl<W: Worker> Runtime<W> {
    /// Whether another owner has claimed partition `p` up to offset `last`
    /// (a snapshot's last part, `parts` records): `Some(its claim)` if so.
    /// Free when this owner's own records fill every offset since the last
    /// check; otherwise the offsets between are read.
    pub(super) async fn still_owner(&self, p: i32, parts: u64, last: i64) -> anyhow::Result<Option<i64>> {
        let queued = match lock(&self.tasks).get_mut(&p) {
            Some(t) => std::mem::take(&mut t.ownership.queued),
            None => return Ok(None),
        };
        // Queued before the parts, so answered before them.
        let acked = futures::future::join_all(queued).await.into_iter().filter(|d| matches!(d, Ok(Ok(_)))).count();
        let (verified, written, lineage) = match lock(&self.tasks).get_mut(&p) {
            Some(t) => {
                t.ownership.written += parts + acked as u64;
                (t.ownership.verified, t.ownership.written, t.lineage)
            }
            None => return Ok(None),
        };
        let Some(lineage) = lineage else { return Ok(None) };
        if written as i64 == last - verified {
            self.verified(p, last);
            return Ok(None);
        }
        let (cfg, topic) = (&self.cfg, self.state_topic.as_str());
        let records = tokio::task::block_in_place(|| -> anyhow::Result<Vec<Record>> {
            let consumer = ChangelogSource::client(cfg)?;
            let mut reader = ChangelogReader::open(consumer, topic, p, (verified + 1, last + 1), false, false)?;
            let records = reader.by_ref().collect();
            reader.finish()?;
            Ok(records)
        })?;
        if let Some(claim) = changelog::newer_claim(&records, lineage) {
            return Ok(Some(claim));
        }
        self.verified(p, last);
        Ok(None)
    }

    /// Nobody else claimed partition `p` up to `offset`.
    pub(super) fn verified(&self, p: i32, offset: i64) {
        if let Some(t) = lock(&self.tasks).get_mut(&p) {
            t.ownership.verified = offset;
            t.ownership.written = 0;
        }
    }

    pub(super) fn put_back(&self, p: i32, store: Store<W::State>) {
        if let Some(task) = lock(&self.tasks).get_mut(&p) {
            task.store = store;
        }
    }

    /// Writes every key's state as of `batch` (published) as snapshot parts,
    /// then points later records at it: the first record that carries the
    /// new pointer is a repeated `Published` marker of the same batch.
    /// Returns that marker's offset once it is acknowledged (effectively-once).
    pub(super) async fn snapshot(&self, p: i32, batch: u64, store: &Store<W::State>) -> anyhow::Result<Option<i64>> {
        let started = Instant::now();
        let (checkpoint, old) = match lock(&self.tasks).get(&p) {
            Some(t) => (t.checkpoint.clone(), t.stamp()),
            None => return Ok(None),
        };
        // Two passes over the keys (sizes, then parts), each part sent as soon
        // as it is built with a few in flight: memory stays at a few parts,
        // not a copy of the whole state.
        let sizes = tokio::task::block_in_place(|| store.sizes())?;
        let keys = sizes.len();
        let snapshot = changelog::SnapshotParts::new(
            batch,
            checkpoint,
            sizes,
            store.entries(),
            self.cfg.changelog_record_bytes / 2,
        );
        let parts = snapshot.parts();
        let topic = self.state_topic.as_str();
        let mut in_flight = futures::stream::FuturesOrdered::new();
        let mut offsets = Vec::with_capacity(parts as usize);
        let mut bytes = 0u64;
        for entry in snapshot {
            let entry = entry?;
            let record = Outgoing::changelog(topic, p, &entry, old)?;
            bytes += record.value.len() as u64;
            in_flight.push_back(enqueue(&self.producer, &record).await?);
            while in_flight.len() >= SNAPSHOT_PARTS_IN_FLIGHT {
                offsets.push(delivered(in_flight.next().await, format_args!("a snapshot part to {topic}"))?);
            }
        }
        while let Some(d) = in_flight.next().await {
            offsets.push(delivered(Some(d), format_args!("a snapshot part to {topic}"))?);
        }
        let at = offsets[0];
        if self.cfg.guarantee == Guarantee::EffectivelyOnce {
            // Later records may point at this snapshot only if no other owner
            // claimed the partition before it was complete (see changelog::newer_claim).
            let last = offsets.iter().copied().max().unwrap_or(at);
            match self.still_owner(p, offsets.len() as u64, last).await {
                Ok(None) => {}
                Ok(Some(claim)) => {
                    tracing::warn!(
                        worker = self.worker.name(),
                        partition = p,
                        claim,
                        "another member claimed this partition: this one stops writing it and rejoins the group \
                         (what it wrote since is skipped by every restore)"
                    );
                    let mut tasks = lock(&self.tasks);
                    tasks.remove(&p);
                    self.metrics.assigned.set(tasks.len() as i64);
                    self.rejoin.store(true, Ordering::Relaxed);
                    return Ok(None);
                }
                Err(e) => {
                    tracing::warn!(partition = p, error = %format!("{e:#}"), "could not check the partition's owner; the snapshot is not used");
                    // Try again after another interval, not at every batch.
                    if let Some(t) = lock(&self.tasks).get_mut(&p) {
                        t.since_snapshot = 0;
                    }
                    return Ok(None);
                }
            }
        }
        let marker = Outgoing::published(topic, p, batch, Stamp { snapshot: Some(at), ..old })?;
        let marked = send_all(&self.producer, std::slice::from_ref(&marker)).await?;
        let exactly_once = self.cfg.guarantee == Guarantee::ExactlyOnce;
        // Effectively-once trims only after checking no other owner claimed
        // the partition up to the marker; that check counts the marker as
        // this owner's record.
        let check_owner = !exactly_once && self.cfg.trim_changelog;
        let marker_at = marked.first().copied();
        if let Some(t) = lock(&self.tasks).get_mut(&p) {
            t.ownership.saw(offsets.iter().copied().max().unwrap_or(at).max(marker_at.unwrap_or(at)));
            t.snapshot = Some(at);
            t.snapshot_bytes = bytes;
            t.since_snapshot = 0;
            if exactly_once {
                t.trim_after_commit = self.cfg.trim_changelog.then_some(at);
            }
            if !check_owner {
                t.ownership.written += 1;
            }
        }
        self.metrics.snapshots.inc();
        tracing::info!(worker = self.worker.name(), partition = p, batch, offset = at, parts, keys, bytes, took = ?started.elapsed(), "state snapshot written");
        if check_owner {
            // Every later claim's base is this snapshot or a newer one once no
            // claim came before the marker: the history below it is not needed.
            match self.still_owner(p, 1, marker_at.unwrap_or(at)).await {
                Ok(None) => self.trim(&[(p, at)]).await,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(partition = p, error = %format!("{e:#}"), "could not check the partition's owner; the changelog is not trimmed")
                }
            }
        }
        Ok(marker_at)
    }

    /// Deletes each changelog partition's records below the offset given
    /// (the start of its latest snapshot). A failure only leaves the history
    /// in place: it is logged and counted, and the next snapshot tries again.
    pub(super) async fn trim(&self, below: &[(i32, i64)]) {
        if below.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for &(p, offset) in below {
            if let Err(e) = tpl.add_partition_offset(&self.state_topic, p, Offset::Offset(offset)) {
                tracing::warn!(partition = p, error = %e, "cannot trim the changelog");
                return;
            }
        }
        let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
        let failed: Vec<String> = match self.admin.delete_records(&tpl, &opts).await {
            Ok(done) => done
                .elements()
                .iter()
                .filter_map(|e| e.error().err().map(|err| format!("partition {}: {err}", e.partition())))
                .collect(),
            Err(e) => vec![e.to_string()],
        };
        let ok = below.len().saturating_sub(failed.len());
        self.metrics.trims.with_label_values(&[metrics::TRIM_OK]).inc_by(ok as u64);
        if failed.is_empty() {
            tracing::debug!(topic = self.state_topic, ?below, "changelog trimmed below the latest snapshot");
        } else {
            self.metrics.trims.with_label_values(&[metrics::TRIM_FAILED]).inc_by(failed.len() as u64);
            tracing::warn!(topic = self.state_topic, errors = ?failed, "could not trim the changelog (DeleteRecords); its history stays until the next snapshot");
        }
    }
}
