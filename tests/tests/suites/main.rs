//! Every integration suite of the workspace in one test binary: each links
//! all of `shared`, so one binary is linked once instead of sixteen times.
//! Run one suite with `tests/run --no-lint -E 'test(/^delivery::/)'`.

mod architecture;
mod binaries;
mod boundaries;
mod budget_shards;
mod bus_contract;
mod configuration;
mod cost_guard;
mod delivery;
mod doctor;
mod embedded_store;
mod end_to_end;
mod faults;
mod fuzzing;
mod generation;
mod intake;
mod janitor;
mod live;
mod live_cloud;
mod local_run;
mod object_contract;
mod outages;
mod report;
mod store_contract;
mod tenants;
mod terraform;
mod vertex_client;
mod webhooks;
