//! Billing: prices (`pricing`), the monthly job that turns flushed usage into bills and
//! charges (`job`), the scheduler that runs it in every gateway (`scheduler`), the
//! ledger's derived views: balance and bill status (`ledger`), credit control's
//! headroom per account (`credit`), and the due sweep that suspends at due dates and
//! raises reminders and low-balance notices (`due`).
//! Bills and ledger entries are only ever added, never edited: corrections are new
//! entries. Must not run on the request path.

pub mod credit;
pub mod due;
pub mod job;
pub mod ledger;
pub mod pricing;
pub mod scheduler;
