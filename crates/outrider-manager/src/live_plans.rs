//! The index of the plans that are not done (`plans-live/{t}/{id}`, empty values), written
//! in the same transaction as the plan: the executor rereads and admission compares only
//! these, so finished plans cost nothing however many are kept.

use outrider_model::Plan;
use outrider_store::{KeyValue, Op, Store};

use crate::{Error, codec::decode, keys};

/// The index write that goes with storing `plan`: in the index while the plan is not done.
pub fn op(tenant: &str, plan: &Plan) -> Op {
    let key = keys::live_plan(tenant, &plan.id);
    if plan.state.is_terminal() { Op::delete(key) } else { Op::put(key, Vec::new()) }
}

/// The stored records (`plans/{t}/{id}`) of the live plans under the index prefix `prefix`.
async fn records(store: &dyn Store, prefix: &str) -> Result<Vec<KeyValue>, Error> {
    let index = store.range(prefix).await?;
    let mut out = Vec::with_capacity(index.kvs.len());
    for kv in &index.kvs {
        let Some((tenant, id)) = kv.key.strip_prefix(keys::LIVE_PLANS).and_then(|r| r.split_once('/')) else {
            continue;
        };
        // A plan deleted meanwhile is simply not there.
        if let Some(plan) = store.get(&keys::plan(tenant, id)).await? {
            out.push(plan);
        }
    }
    Ok(out)
}

/// The records of every tenant's live plans, for the executor.
pub async fn all(store: &dyn Store) -> Result<Vec<KeyValue>, Error> {
    records(store, keys::LIVE_PLANS).await
}

/// The live plans of `tenant`.
pub async fn of_tenant(store: &dyn Store, tenant: &str) -> Result<Vec<Plan>, Error> {
    records(store, &keys::live_plans(tenant)).await?.iter().map(|kv| decode(&kv.key, &kv.value)).collect()
}

/// Makes the index match the stored plans (once, at start: stores written before the index
/// existed, or an index entry left by a crash between versions); returns how many changed.
pub async fn rebuild(store: &dyn Store) -> Result<usize, Error> {
    let plans = store.range(keys::PLANS).await?;
    let index = store.range(keys::LIVE_PLANS).await?;
    let indexed: std::collections::BTreeSet<&str> = index.kvs.iter().map(|i| i.key.as_str()).collect();
    let mut ops = Vec::new();
    let mut live = std::collections::BTreeSet::new();
    for kv in &plans.kvs {
        let Some(tenant) = kv.key.strip_prefix(keys::PLANS).and_then(|r| r.split('/').next()) else { continue };
        let plan: Plan = decode(&kv.key, &kv.value)?;
        if plan.state.is_terminal() {
            continue;
        }
        let key = keys::live_plan(tenant, &plan.id);
        if !indexed.contains(key.as_str()) {
            ops.push(op(tenant, &plan));
        }
        live.insert(key);
    }
    // Entries of done or deleted plans.
    ops.extend(index.kvs.iter().filter(|i| !live.contains(&i.key)).map(|i| Op::delete(&i.key)));
    let changed = ops.len();
    for chunk in ops.chunks(store.max_txn_ops().clamp(1, 500)) {
        store.txn(outrider_store::Txn::ops(chunk.to_vec())).await?;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use outrider_model::{PlanSpec, PlanState};
    use outrider_store::{RedbStore, Txn};
    use time::OffsetDateTime;

    use super::*;
    use crate::codec::encode;

    fn plan(id: &str, state: PlanState) -> Plan {
        let spec: PlanSpec =
            serde_json::from_value(serde_json::json!({"sidecar": "mesh", "target_version": "1.1.0"})).unwrap();
        let mut p = Plan::new(id.into(), spec, Vec::new(), Vec::new(), OffsetDateTime::now_utc());
        p.state = state;
        p
    }

    async fn put(store: &dyn Store, p: &Plan, with_index: bool) {
        let mut ops = vec![Op::put(keys::plan("t", &p.id), encode(p).unwrap())];
        if with_index {
            ops.push(op("t", p));
        }
        store.txn(Txn::ops(ops)).await.unwrap();
    }

    fn ids(plans: &[Plan]) -> Vec<&str> {
        plans.iter().map(|p| p.id.as_str()).collect()
    }

    #[tokio::test]
    async fn only_plans_that_are_not_done_are_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s.redb")).unwrap();
        for (id, state) in [("a", PlanState::Running), ("b", PlanState::Aborted), ("c", PlanState::Paused)] {
            put(&store, &plan(id, state), true).await;
        }
        for i in 0..50 {
            put(&store, &plan(&format!("done{i}"), PlanState::Completed), true).await;
        }
        assert_eq!(ids(&of_tenant(&store, "t").await.unwrap()), ["a", "c"]);
        assert_eq!(store.count(keys::LIVE_PLANS).await.unwrap(), 2, "done plans are not in the index");
        // Finishing a plan takes it out.
        put(&store, &plan("a", PlanState::Completed), true).await;
        assert_eq!(ids(&of_tenant(&store, "t").await.unwrap()), ["c"]);
        assert_eq!(all(&store).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn the_index_is_rebuilt_for_stores_written_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s.redb")).unwrap();
        put(&store, &plan("a", PlanState::Running), false).await;
        put(&store, &plan("b", PlanState::Completed), false).await;
        store.txn(Txn::ops(vec![Op::put(keys::live_plan("t", "b"), Vec::new())])).await.unwrap();
        store.txn(Txn::ops(vec![Op::put(keys::live_plan("t", "gone"), Vec::new())])).await.unwrap();
        assert_eq!(rebuild(&store).await.unwrap(), 3);
        assert_eq!(ids(&of_tenant(&store, "t").await.unwrap()), ["a"]);
        assert_eq!(store.count(keys::LIVE_PLANS).await.unwrap(), 1);
        assert_eq!(rebuild(&store).await.unwrap(), 0);
    }
}
