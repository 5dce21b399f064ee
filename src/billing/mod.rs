//! Billing: prices (`pricing`), the monthly job that turns flushed usage into bills and
//! charges (`job`), the scheduler that runs it in every gateway (`scheduler`), and the
//! ledger's derived views: balance and bill status (`ledger`).
//! Bills and ledger entries are only ever added, never edited: corrections are new
//! entries. Must not run on the request path.

pub mod job;
pub mod ledger;
pub mod pricing;
pub mod scheduler;
