//! The consumer context: on assignment a task is claimed and restored from
//! the changelog before any input of its partition is processed; on revoke
//! its in-flight batch is settled and it is dropped. Also librdkafka's logs,
//! errors and statistics.

use super::*;

/// Consumer context: restores tasks when partitions are assigned.
pub(super) struct Ctx<W: Worker> {
    pub(super) worker: Arc<W>,
    pub(super) cfg: RuntimeConfig,
    pub(super) tasks: Tasks<W::State>,
    pub(super) metrics: WorkerMetrics,
    pub(super) ready: Arc<AtomicBool>,
    /// The runtime's producer: flushed before partitions are released, so
    /// the next owner's restore sees every record this member queued (the
    /// published markers are not awaited).
    pub(super) producer: FutureProducer<Quiet>,
    /// The worker's changelog topic.
    pub(super) state_topic: String,
    /// Where tasks keep their states.
    pub(super) site: Arc<StoreSite>,
}

impl<W: Worker> Ctx<W> {
    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList, incremental: bool) {
        self.ready.store(false, Ordering::Relaxed);
        self.metrics.ready.set(0);
        self.metrics.rebalances.with_label_values(&[metrics::REBALANCE_ASSIGN]).inc();
        let mut per_topic: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
        for e in tpl.elements() {
            per_topic.entry(e.topic().to_string()).or_default().insert(e.partition());
        }
        // A join task needs partition p of every input: never process half a
        // task. (No partitions at all is fine: more instances than partitions.)
        let sets: Vec<_> = per_topic.values().collect();
        let half = per_topic.len() != self.cfg.inputs.len() || sets.windows(2).any(|w| w[0] != w[1]);
        if !incremental && !per_topic.is_empty() && half {
            tracing::error!(worker = self.worker.name(), assignment = ?per_topic, "assignment is not co-partitioned (use the range assignor); exiting");
            std::process::exit(70);
        }
        let partitions: BTreeSet<i32> = per_topic.values().flatten().copied().collect();
        if self.cfg.guarantee == Guarantee::ExactlyOnce && !partitions.is_empty() {
            // KIP-447: a read_committed member's offset fetch waits while a
            // transaction that sends offsets for these partitions is still
            // open, so the previous owner's last commit (or abort) lands
            // before the restore reads the changelog.
            let mut tpl = TopicPartitionList::new();
            for (topic, ps) in &per_topic {
                for p in ps {
                    tpl.add_partition(topic, *p);
                }
            }
            if let Err(e) = consumer.committed_offsets(tpl, RESTORE_PATIENCE) {
                tracing::error!(worker = self.worker.name(), error = %e, "waiting for the previous owner's transactions failed; exiting");
                std::process::exit(70);
            }
        }
        let mut with_offsets = TopicPartitionList::new();
        let mut tasks = lock(&self.tasks);
        self.metrics.restoring.set(partitions.len() as i64);
        tracing::info!(worker = self.worker.name(), ?partitions, "partitions assigned; restoring their tasks");
        let claims = match self.cfg.guarantee.records() && !partitions.is_empty() {
            true => with_retry("claiming the assigned partitions", &self.metrics, || {
                claim_partitions(&self.cfg, &self.state_topic, &partitions)
            }),
            false => Ok(BTreeMap::new()),
        };
        let claims = claims.unwrap_or_else(|e| {
            tracing::error!(worker = self.worker.name(), error = %format!("{e:#}"), "claiming the assigned partitions failed; exiting");
            std::process::exit(70);
        });
        for p in partitions.iter().copied() {
            let started = Instant::now();
            let restored = match claims.get(&p) {
                Some(c) => self.site.open(p, partitions.len()).and_then(|store| {
                    let how = Restore::Claimed(*c);
                    restore_with_retry(&*self.worker, &self.cfg, &self.site, p, &self.metrics, how, store)
                }),
                None => Ok((Task::empty(), RestoreStats { republished: 0 })),
            };
            match restored {
                Ok((task, stats)) => {
                    self.metrics.restore_seconds.observe(started.elapsed().as_secs_f64());
                    self.metrics.republished.inc_by(stats.republished);
                    for (topic, offset) in resume_offsets(&self.cfg, p, &task) {
                        let _ = with_offsets.add_partition_offset(&topic, p, offset);
                    }
                    tasks.insert(p, task);
                    self.metrics.restoring.dec();
                }
                Err(e) => {
                    // Without its state a task must not run: fail loudly, the
                    // supervisor restarts us and the restore is retried.
                    tracing::error!(worker = self.worker.name(), partition = p, error = %format!("{e:#}"), "restore failed; exiting");
                    std::process::exit(70);
                }
            }
        }
        publish_task_gauges(&self.metrics, &self.site, &mut tasks);
        self.ready.store(true, Ordering::Relaxed);
        self.metrics.ready.set(1);
        tracing::info!(worker = self.worker.name(), ?partitions, "assigned; tasks restored");
        let r = if incremental { consumer.incremental_assign(&with_offsets) } else { consumer.assign(&with_offsets) };
        if let Err(e) = r {
            tracing::error!(error = %e, "assign failed");
        }
        // The restored checkpoint is where the group stands. A previous owner
        // killed between recording a batch and committing its offsets left the
        // group's committed offset behind it; with no input after the
        // takeover nothing else would move it, and the lag would show records
        // that were processed long ago.
        if self.cfg.guarantee == Guarantee::EffectivelyOnce {
            let restored: Vec<GroupOffset> = with_offsets
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some((e.topic().to_string(), e.partition(), o)),
                    _ => None,
                })
                .collect();
            commit_offsets(consumer, &restored, CommitMode::Async);
        }
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList, incremental: bool) {
        self.metrics.rebalances.with_label_values(&[metrics::REBALANCE_REVOKE]).inc();
        self.metrics.lag.reset();
        if let Err(e) = self.producer.flush(Duration::from_secs(30)) {
            tracing::warn!(error = %e, "flushing before releasing partitions failed; the next owner re-publishes what is unmarked");
        }
        let mut tasks = lock(&self.tasks);
        let released: Vec<i32> = if incremental {
            tpl.elements().iter().map(|e| e.partition()).collect()
        } else {
            tasks.keys().copied().collect()
        };
        // Mark what the flush published, so the next owner re-publishes nothing.
        let mut committable = vec![];
        let mut marked = false;
        let mut gone = vec![];
        for p in &released {
            let Some(mut task) = tasks.remove(p) else { continue };
            if let Some(u) = task.unacked.take() {
                // Never wait here: what the flush did not deliver stays
                // unmarked, and the store keeps its position (a restore reads
                // that batch again).
                let acked =
                    u.deliveries.into_iter().all(|d| matches!(futures::FutureExt::now_or_never(d), Some(Ok(Ok(_)))));
                if !acked {
                    continue;
                }
                committable.extend(u.offsets);
                if self.cfg.guarantee.records() {
                    if let Some((_, d)) = queue_published(&self.producer, &self.state_topic, *p, u.batch, task.stamp())
                    {
                        task.ownership.queued.push(d);
                        marked = true;
                    }
                }
            }
            gone.push((*p, task));
        }
        if marked {
            let _ = self.producer.flush(Duration::from_secs(10));
        }
        // A store that reflects everything its owner wrote lets this member,
        // if the partition comes back, read nothing before its next claim.
        for (p, mut task) in gone {
            task.persist_released(&self.site, p);
        }
        commit_offsets(consumer, &committable, CommitMode::Sync);
        if incremental {
            let _ = consumer.incremental_unassign(tpl);
        } else {
            let _ = consumer.unassign();
        }
        publish_task_gauges(&self.metrics, &self.site, &mut tasks);
        tracing::info!(worker = self.worker.name(), revoked = tpl.count(), "partitions revoked");
    }
}

impl<W: Worker> ClientContext for Ctx<W> {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        keyflow_schemas::kafka::report_log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        keyflow_schemas::kafka::report_error(&error, reason);
    }

    fn stats(&self, stats: rdkafka::Statistics) {
        for (topic, t) in &stats.topics {
            for (p, part) in &t.partitions {
                if *p >= 0 && part.consumer_lag >= 0 {
                    self.metrics.lag.with_label_values(&[topic.as_str(), &p.to_string()]).set(part.consumer_lag);
                }
            }
        }
    }
}

impl<W: Worker> ConsumerContext for Ctx<W> {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::types::RDKafkaRespErr::*;
        let incremental = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        match err {
            RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, tpl, incremental),
            RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(consumer, tpl, incremental),
            other => tracing::error!(?other, "rebalance error"),
        }
    }

    fn pre_rebalance(&self, _: &BaseConsumer<Self>, _: &Rebalance<'_>) {}
}
