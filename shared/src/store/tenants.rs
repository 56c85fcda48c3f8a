//! `tenants/{name}`: the teams sharing the deployment. Read-mostly: written
//! by an operator (`asmr tenant ...`, terraform), read by intake to know who
//! a key belongs to. The default tenant exists whether stored or not; it is
//! stored the first time an operator sets something on it.

use super::backend::{Collection, Cond, Dir, Scalar};
use super::{Created, Record, Round, Store, until_done};
use crate::domain::invalid::ValidationError;
use crate::domain::tenant::{ApiKey, Tenant, TenantName};
use crate::error::{Error, Result};
use crate::time::Timestamp;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// More tenants than a deployment is meant for; listings stop there.
const MAX_TENANTS: u32 = 1000;

/// Whose records a listing or a count covers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Scope {
    /// Every tenant's (an operator's view).
    #[default]
    Everyone,
    /// One tenant's.
    Tenant(TenantName),
}

impl Scope {
    /// The default tenant's records.
    pub fn default_tenant() -> Self {
        Scope::Tenant(TenantName::default())
    }

    /// The one tenant in scope; `None` for everyone (a job filter's
    /// tenant).
    pub fn tenant(&self) -> Option<TenantName> {
        match self {
            Scope::Everyone => None,
            Scope::Tenant(tenant) => Some(tenant.clone()),
        }
    }

    /// The condition a query takes: `tenant == name` for a named tenant;
    /// none for everyone, nor for the default tenant, whose records of
    /// before tenants have no field to match (they are kept by
    /// [`Scope::covers`], and counted by difference in
    /// [`Store::count_in`]).
    pub(super) fn cond(&self) -> Option<Cond> {
        match self {
            Scope::Tenant(name) if !name.is_default() => {
                Some(Cond::Eq("tenant", Scalar::Str(name.to_string())))
            }
            _ => None,
        }
    }

    /// Whether a record of `tenant` is in scope.
    pub fn covers(&self, tenant: &TenantName) -> bool {
        match self {
            Scope::Everyone => true,
            Scope::Tenant(name) => name == tenant,
        }
    }
}

/// A [`Scope`] resolved for counting ([`Store::counting`]).
pub(super) enum Counting {
    /// The records matching this condition (or all of them).
    Where(Option<Cond>),
    /// Every record but those matching any of these conditions.
    AllBut(Vec<Cond>),
}

impl Record for Tenant {
    const COLLECTION: Collection = Collection::Tenants;
    const KIND: &'static str = "tenant";

    fn id(&self) -> &str {
        self.name().as_str()
    }
}

impl Store {
    /// Stores a new tenant; `created` is false when one of that name exists
    /// (then the stored one is returned).
    pub async fn add_tenant(&self, tenant: Tenant) -> Result<Created<Tenant>> {
        let added = self.create(tenant).await;
        self.tenant_directory.forget().await;
        added
    }

    /// The tenant `name`: the stored one, the implicit default, or `None`.
    pub async fn tenant(&self, name: &TenantName) -> Result<Option<Tenant>> {
        Ok(match self.load::<Tenant>(name.as_str()).await? {
            Some((tenant, _)) => Some(tenant),
            None if name.is_default() => Some(Tenant::implicit_default()),
            None => None,
        })
    }

    /// Every tenant by name, the default one first (stored or implicit).
    pub async fn tenants(&self) -> Result<Vec<Tenant>> {
        let mut tenants = self
            .page::<Tenant>(Vec::new(), &[("id", Dir::Asc)], MAX_TENANTS, None)
            .await?
            .items;
        if !tenants.iter().any(|t| t.name().is_default()) {
            tenants.push(Tenant::implicit_default());
        }
        tenants.sort_by_key(|t| (!t.name().is_default(), t.name().clone()));
        Ok(tenants)
    }

    /// How `scope`'s records are counted, resolved once for the many
    /// counts of one view: by a condition, or, for the default tenant, as
    /// every record less those of the named tenants (its older records
    /// carry no tenant field to count by).
    pub(super) async fn counting(&self, scope: &Scope) -> Result<Counting> {
        Ok(match scope {
            Scope::Tenant(name) if name.is_default() => Counting::AllBut(
                self.tenants()
                    .await?
                    .iter()
                    .filter_map(|t| Scope::Tenant(t.name().clone()).cond())
                    .collect(),
            ),
            scope => Counting::Where(scope.cond()),
        })
    }

    /// How many records of `collection` match `conds`, counted as
    /// `counting` says.
    pub(super) async fn count_in(
        &self,
        collection: Collection,
        mut conds: Vec<Cond>,
        counting: &Counting,
    ) -> Result<u64> {
        match counting {
            Counting::Where(cond) => {
                conds.extend(cond.clone());
                self.backend.count(collection, &conds).await
            }
            Counting::AllBut(others) => {
                let counts = futures::future::try_join_all(others.iter().map(|other| {
                    let mut conds = conds.clone();
                    conds.push(other.clone());
                    async move { self.backend.count(collection, &conds).await }
                }));
                let (all, others) =
                    tokio::try_join!(self.backend.count(collection, &conds), counts)?;
                Ok(all.saturating_sub(others.iter().sum()))
            }
        }
    }

    /// Reads tenant `name`, applies `change`, and writes it back if nobody
    /// wrote it meanwhile (again if someone did). The default tenant is
    /// stored by its first change. `NotFound` for any other unknown name.
    pub async fn change_tenant<R: Send>(
        &self,
        name: &TenantName,
        change: impl Fn(&mut Tenant, Timestamp) -> Result<R, ValidationError> + Send + Sync,
    ) -> Result<(Tenant, R)> {
        let change = &change;
        let changed = until_done(Tenant::KIND, name.as_str(), || async move {
            let now = Timestamp::now();
            let (mut tenant, version) = match self.load::<Tenant>(name.as_str()).await? {
                Some((tenant, version)) => (tenant, Some(version)),
                None if name.is_default() => (Tenant::implicit_default(), None),
                None => {
                    return Err(Error::NotFound {
                        kind: Tenant::KIND,
                        id: name.to_string(),
                    });
                }
            };
            let outcome = change(&mut tenant, now)?;
            let doc = super::to_doc(&tenant)?;
            let written = match &version {
                Some(version) => {
                    self.backend
                        .replace(Collection::Tenants, name.as_str(), version, &doc)
                        .await?
                }
                None => self
                    .backend
                    .create(Collection::Tenants, name.as_str(), &doc)
                    .await?
                    .is_some(),
            };
            Ok(match written {
                true => Round::Done((tenant, outcome)),
                false => Round::Lost,
            })
        })
        .await;
        self.tenant_directory.forget().await;
        changed
    }
}

/// The tenants as the stages see them, one per [`Store`] and its clones:
/// read from the store at most once per [`TenantDirectory::TTL`] (tenants
/// change rarely, and a lookup per request, per paid claim or per file
/// would be a store read each). A name or key not found is looked up once
/// more in a read at least a second newer, so a key made a moment ago
/// works within a second, while unknown keys cost at most one store read a
/// second (concurrent lookups share it). A change made through this store
/// is seen at once; one made elsewhere (another instance, `asmr tenant`)
/// within the TTL.
#[derive(Default)]
pub(super) struct TenantDirectory {
    cached: tokio::sync::Mutex<Option<Snapshot>>,
}

/// The tenants as read at one moment.
type Snapshot = (Instant, Arc<Vec<Tenant>>);

/// How much newer than the last read a second look after a miss is.
const MISS_REFRESH: Duration = Duration::from_secs(1);

impl TenantDirectory {
    /// How long the directory trusts what it read.
    const TTL: Duration = Duration::from_secs(10);

    /// Forgets what it read: the next lookup reads the store.
    async fn forget(&self) {
        *self.cached.lock().await = None;
    }
}

impl Store {
    /// The tenants as read within the TTL and after `newer_than`, else read
    /// now (once, however many ask at the same time).
    async fn snapshot(&self, newer_than: Option<Instant>) -> Result<Snapshot> {
        let mut cached = self.tenant_directory.cached.lock().await;
        if let Some((at, tenants)) = &*cached
            && at.elapsed() < TenantDirectory::TTL
            && newer_than.is_none_or(|then| *at > then)
        {
            return Ok((*at, tenants.clone()));
        }
        let read = (Instant::now(), Arc::new(self.tenants().await?));
        *cached = Some(read.clone());
        Ok(read)
    }

    /// The first tenant `wanted` picks, looked for again in a newer read
    /// when the cached one has none.
    async fn find_tenant(&self, wanted: impl Fn(&Tenant) -> bool) -> Result<Option<Tenant>> {
        let (at, tenants) = self.snapshot(None).await?;
        if let Some(tenant) = tenants.iter().find(|t| wanted(t)) {
            return Ok(Some(tenant.clone()));
        }
        tokio::time::sleep_until((at + MISS_REFRESH).into()).await;
        let (_, tenants) = self.snapshot(Some(at)).await?;
        Ok(tenants.iter().find(|t| wanted(t)).cloned())
    }

    /// The tenant `name` as the directory has it, if it exists (the
    /// default one always does).
    pub async fn cached_tenant(&self, name: &TenantName) -> Result<Option<Tenant>> {
        self.find_tenant(|tenant| tenant.name() == name).await
    }

    /// The tenant holding the live API key `key`, if any.
    pub async fn tenant_of_key(&self, key: &str) -> Result<Option<Tenant>> {
        let hash = ApiKey::hash_of(key);
        self.find_tenant(|tenant| tenant.accepts(&hash, Timestamp::now()))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::tenant::{DEFAULT_KEY_GRACE, TenantSettings};
    use crate::store::embedded::EmbeddedBackend;

    fn store() -> Store {
        Store::new(Arc::new(EmbeddedBackend::in_memory().unwrap()))
    }

    #[tokio::test]
    async fn the_default_tenant_exists_until_it_is_stored_and_keys_find_their_tenant() {
        let store = store();
        let default = TenantName::default();
        assert_eq!(
            store.tenant(&default).await.unwrap(),
            Some(Tenant::implicit_default())
        );
        let acme: TenantName = "acme".parse().unwrap();
        assert_eq!(store.tenant(&acme).await.unwrap(), None);
        assert!(matches!(
            store.change_tenant(&acme, |_, _| Ok(())).await,
            Err(Error::NotFound { .. })
        ));

        let now = Timestamp::now();
        let tenant = Tenant::new(acme.clone(), &TenantSettings::default(), now).unwrap();
        assert!(store.add_tenant(tenant.clone()).await.unwrap().created);
        assert!(!store.add_tenant(tenant).await.unwrap().created);
        let (_, key) = store
            .change_tenant(&acme, |t, now| Ok(t.rotate_key(DEFAULT_KEY_GRACE, now)))
            .await
            .unwrap();
        let (_, default_key) = store
            .change_tenant(&default, |t, now| Ok(t.rotate_key(DEFAULT_KEY_GRACE, now)))
            .await
            .unwrap();
        let names: Vec<String> = store
            .tenants()
            .await
            .unwrap()
            .iter()
            .map(|t| t.name().to_string())
            .collect();
        assert_eq!(names, ["default", "acme"]);
        let found = async |key: &str| {
            store
                .tenant_of_key(key)
                .await
                .unwrap()
                .map(|t| t.name().to_string())
        };
        assert_eq!(found(key.reveal()).await.as_deref(), Some("acme"));
        assert_eq!(
            found(default_key.reveal()).await.as_deref(),
            Some("default")
        );
        assert_eq!(found("asmr_nothing").await, None);
        // A bad setting is refused and nothing is written.
        let refused = store
            .change_tenant(&acme, |t, now| {
                t.set(
                    &TenantSettings {
                        weight: Some(0),
                        ..TenantSettings::default()
                    },
                    now,
                )
            })
            .await;
        assert!(matches!(refused, Err(Error::Invalid(_))), "{refused:?}");
        assert_eq!(store.tenant(&acme).await.unwrap().unwrap().weight(), 1);
    }
}
